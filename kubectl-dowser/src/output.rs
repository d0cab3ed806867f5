//! Output as kubectl gives it: `-o wide|json|yaml`, ages, colour only on a terminal.

use serde::Serialize;

/// `-o`: text by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// More on each line.
    Wide,
    /// The objects involved, as a `List`.
    Json,
    /// The objects involved, as a `List`.
    Yaml,
}

/// How a state is coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Good,
    Waiting,
    Bad,
    Plain,
}

/// How text output looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    pub colour: bool,
    pub all_namespaces: bool,
}

impl Style {
    /// `text` coloured for `health` (when colour is on).
    pub fn paint(&self, text: &str, health: Health) -> String {
        let code = match health {
            Health::Good => "32",
            Health::Waiting => "33",
            Health::Bad => "31",
            Health::Plain => return text.to_string(),
        };
        self.sgr(text, code)
    }

    pub fn bold(&self, text: &str) -> String {
        self.sgr(text, "1")
    }

    fn sgr(&self, text: &str, code: &str) -> String {
        if self.colour && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Colour on stdout: only to a terminal, and never when `NO_COLOR` is set (to anything
/// but the empty string, <https://no-color.org>).
pub fn colour(stdout_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// An age as kubectl prints it: `45s`, `3m12s`, `25m`, `5h7m`, `30h`, `4d2h`, `120d`,
/// `2y30d`, `9y`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            r => format!("{d}d{r}h"),
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if d / 365 < 8 {
        match d % 365 {
            0 => format!("{}y", d / 365),
            r => format!("{}y{r}d", d / 365),
        }
    } else {
        format!("{}y", d / 365)
    }
}

/// Objects as one `v1` `List`, as `kubectl get -o json` prints several, without their
/// managed fields.
pub fn list<T: Serialize>(items: &[T]) -> anyhow::Result<serde_json::Value> {
    let mut items = items
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    for item in &mut items {
        if let Some(meta) = item.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
        }
    }
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": {"resourceVersion": ""},
    }))
}

/// A table as kubectl prints one: upper-case headers, columns three spaces apart, each cell
/// coloured by its health (padding stays outside the colour codes), no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<(String, Health)>], style: &Style) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|(text, _)| text.chars().count())
                .chain([headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<(String, String)>| {
        let mut l = String::new();
        for (i, (shown, text)) in cells.into_iter().enumerate() {
            if i > 0 {
                l.push_str("   ");
            }
            l.push_str(&shown);
            l.push_str(&" ".repeat(widths[i].saturating_sub(text.chars().count())));
        }
        format!("{}\n", l.trim_end())
    };
    let mut out = line(
        headers
            .iter()
            .map(|h| (h.to_string(), h.to_string()))
            .collect(),
    );
    for row in rows {
        out.push_str(&line(
            row.iter()
                .map(|(text, health)| (style.paint(text, *health), text.clone()))
                .collect(),
        ));
    }
    out
}

/// A `List` printed as JSON or YAML.
pub fn print_list(list: &serde_json::Value, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Yaml => serde_yaml::to_string(list)?,
        _ => format!("{}\n", serde_json::to_string_pretty(list)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        for (s, want) in [
            (-3, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600 + 7 * 60, "3h7m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (4 * 86400 + 2 * 3600, "4d2h"),
            (120 * 86400, "120d"),
            (2 * 365 * 86400 + 30 * 86400, "2y30d"),
            (9 * 365 * 86400 + 3, "9y"),
        ] {
            assert_eq!(age(s), want, "{s} s");
        }
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        let on = Style {
            colour: true,
            ..Style::default()
        };
        assert_eq!(on.paint("Running", Health::Good), "\x1b[32mRunning\x1b[0m");
        assert_eq!(on.paint("ClusterIP", Health::Plain), "ClusterIP");
        assert_eq!(Style::default().paint("Failed", Health::Bad), "Failed");
    }

    #[test]
    fn tables_align_columns_whatever_the_colour() {
        let rows = vec![
            vec![
                ("node-a".to_string(), Health::Plain),
                ("ok".to_string(), Health::Good),
                ("1".to_string(), Health::Plain),
            ],
            vec![
                ("b".to_string(), Health::Plain),
                ("failing".to_string(), Health::Bad),
                (String::new(), Health::Plain),
            ],
        ];
        assert_eq!(
            table(&["NODE", "STATE", "N"], &rows, &Style::default()),
            "NODE     STATE     N\nnode-a   ok        1\nb        failing\n"
        );
        let on = Style {
            colour: true,
            ..Style::default()
        };
        let coloured = table(&["NODE", "STATE", "N"], &rows, &on);
        assert!(
            coloured.contains("node-a   \x1b[32mok\x1b[0m        1\n"),
            "{coloured}"
        );
    }

    #[test]
    fn a_list_holds_the_objects_without_managed_fields() {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "managedFields": [{"manager": "x"}]},
        });
        let list = list(&[pod]).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(
            list["items"][0]["metadata"],
            serde_json::json!({"name": "p"})
        );
        let yaml = print_list(&list, Format::Yaml).unwrap();
        let back: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, list);
    }
}
