//! The README's Mermaid diagrams are drawn by the code host from their text: each ```mermaid
//! block must get through Mermaid's own parser (`mermaid.parse`), or the reader sees an error
//! box instead of the picture. The parser runs in node, on a DOM from jsdom, installed from
//! npm into the cache of the other prerequisites (`${DOWSER_CACHE:-~/.cache/dowser}`) on first
//! use.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The versions the parser is installed at (jsdom 24 still runs on node 18).
const MERMAID: &str = "11.17.2";
const JSDOM: &str = "24.1.3";

/// Reads a JSON array of diagrams on stdin; prints a JSON array of `null` (parsed) or the
/// parser's message, one for each.
const PARSE: &str = r#"
import { JSDOM } from 'jsdom';
const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import('mermaid');
let input = '';
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const diagram of JSON.parse(input)) {
  try {
    await mermaid.parse(diagram);
    results.push(null);
  } catch (e) {
    results.push(String(e?.message ?? e));
  }
}
console.log(JSON.stringify(results));
"#;

fn mermaid_blocks(markdown: &str) -> Vec<String> {
    markdown
        .split("\n```mermaid\n")
        .skip(1)
        .map(|rest| {
            rest.split("\n```")
                .next()
                .expect("a closed block")
                .to_string()
        })
        .collect()
}

fn cache() -> PathBuf {
    std::env::var_os("DOWSER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/dowser")
        })
}

fn run(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run {command:?} ({e}): this test needs node and npm (apt-get install nodejs npm)")
    });
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The parser's directory, installed from npm unless it is already there. It is installed
/// beside its final place and moved there whole, so that an interrupted install is never
/// taken for one.
fn parser() -> PathBuf {
    let dir = cache().join(format!("mermaid-{MERMAID}-jsdom-{JSDOM}"));
    if !dir.join("node_modules/mermaid/package.json").exists() {
        let partial = dir.with_extension(format!("partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(
            partial.join("package.json"),
            format!(
                r#"{{"private": true, "dependencies": {{"mermaid": "{MERMAID}", "jsdom": "{JSDOM}"}}}}"#
            ),
        )
        .unwrap();
        run(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--ignore-scripts"])
                .args(["--loglevel", "error"])
                .current_dir(&partial),
            "installing Mermaid's parser from npm",
        );
        // Another run may have finished first: its copy is as good.
        if std::fs::rename(&partial, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
    }
    std::fs::write(dir.join("parse.mjs"), PARSE).unwrap();
    dir
}

/// Each diagram's parse error, `None` for those that parse.
fn parse(parser: &Path, diagrams: &[String]) -> Vec<Option<String>> {
    let mut child = Command::new("node")
        .arg("parse.mjs")
        .current_dir(parser)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs: this test needs node and npm (apt-get install nodejs npm)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(diagrams).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser did not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the parser's answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn the_readme_diagrams_parse_as_mermaid() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let diagrams = mermaid_blocks(&readme);
    assert!(
        !diagrams.is_empty(),
        "the README has no mermaid block (How it works)"
    );
    // A diagram with an edge to nowhere: the parser must refuse it, or it checks nothing.
    let broken = "flowchart TD\n    config --> \n".to_string();
    let mut all = diagrams.clone();
    all.push(broken);
    let results = parse(&parser(), &all);
    assert_eq!(results.len(), all.len());
    let (refused, readme_results) = results.split_last().unwrap();
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("Parse error")),
        "a broken diagram was not refused: {refused:?}"
    );
    for (diagram, error) in diagrams.iter().zip(readme_results) {
        assert!(
            error.is_none(),
            "a README diagram does not parse: {}\n{diagram}",
            error.as_deref().unwrap_or_default()
        );
    }
}

#[test]
fn blocks_are_found_whole() {
    let markdown = "text\n\n```mermaid\nflowchart TD\n    a --> b\n```\n\n```sh\nls\n```\n\n```mermaid\npie\n```\n";
    assert_eq!(
        mermaid_blocks(markdown),
        ["flowchart TD\n    a --> b", "pie"]
    );
}
