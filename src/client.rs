//! The Kubernetes client of each component, named by its user agent (`dowser-agent/0.1.0`)
//! so that the API server's logs, audit and request metrics tell the components apart.

use kube::{Client, Config};

/// A client from the kubeconfig or in-cluster environment, for `component`.
pub async fn for_component(component: &str) -> anyhow::Result<Client> {
    let mut config = Config::infer().await?;
    let agent = format!("dowser-{component}/{}", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent)?,
    ));
    Ok(Client::try_from(config)?)
}
