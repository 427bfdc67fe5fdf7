//! A small typed client of the RabbitMQ management HTTP API (`/api/...`), enough for Conveyor
//! to declare and inspect queues, exchanges, bindings and policies.
//!
//! Invariants:
//! - Every request carries basic auth and is bounded by one timeout (5 s by default), which
//!   covers connecting, TLS, sending and reading the whole body.
//! - Names and vhosts always travel percent-encoded as single path segments: every byte except
//!   the RFC 3986 unreserved characters is encoded, so vhost `/` is `%2F`. (Cowboy still
//!   collapses the dot segments `.` and `..`, so objects with exactly those names cannot be
//!   reached through this API; it answers 405.)
//! - Nothing read from the network is unwrapped: transport failures are `Unreachable`, 401/403
//!   are `Unauthorized`, other non-2xx answers are `Status` (with RabbitMQ's `reason`), and
//!   bodies that do not parse are `Decode`.
//! - Reads answer `None` and deletes answer `false` on 404; nothing else is treated as absent.
//! - `https://` trusts only the given CA when one is given, else the system roots.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// The default bound on one request, connect to last body byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything but the RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The columns `queue`/`queues` ask for, to keep answers small.
const QUEUE_COLUMNS: &str = "name,type,durable,arguments,policy,state,messages,messages_ready,\
                             messages_unacknowledged,message_bytes,consumers,members";

/// Why a management request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManagementError {
    /// The base URL or the CA bundle is unusable.
    #[error("invalid management client settings: {0}")]
    Config(String),
    /// No answer: connection refused or reset, DNS or TLS failure, or the timeout.
    #[error("RabbitMQ management API unreachable: {0}")]
    Unreachable(String),
    /// 401 or 403: wrong credentials or missing user tags/permissions.
    #[error("RabbitMQ management API refused the credentials: {0}")]
    Unauthorized(String),
    /// Any other non-success answer.
    #[error("RabbitMQ management API answered {code}: {reason}")]
    Status { code: u16, reason: String },
    /// A success answer whose body is not what the API documents.
    #[error("cannot decode RabbitMQ management answer: {0}")]
    Decode(String),
}

type Result<T> = std::result::Result<T, ManagementError>;

mod types;
use types::Routed;
pub use types::*;

/// A management API client; clones share one connection pool.
#[derive(Clone, Debug)]
pub struct ManagementClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `scheme://authority[/prefix]`, without a trailing slash.
    base: String,
    auth: HeaderValue,
    timeout: Duration,
}

/// A TLS client configuration (ring provider) trusting `ca_pem` when given, else the system
/// roots. Shared with the AMQP probe.
pub fn tls_client_config(
    ca_pem: Option<&str>,
) -> std::result::Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("CA bundle holds no certificate".into());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(format!("no system CA certificates ({:?})", found.errors));
            }
        }
    }
    config_with_roots(roots)
}

fn config_with_roots(
    roots: rustls::RootCertStore,
) -> std::result::Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl ManagementClient {
    /// A client of the API at `base_url` (`http://host:15672` or `https://...`, optionally
    /// with a path prefix). Only `https` loads the CA (`ca_pem`, else the system roots).
    pub fn new(base_url: &str, user: &str, password: &str, ca_pem: Option<&str>) -> Result<Self> {
        let base = base_url.trim_end_matches('/');
        let uri: Uri = base
            .parse()
            .map_err(|e| ManagementError::Config(format!("{base_url}: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(ManagementError::Config(format!(
                    "{base_url}: not http:// or https://"
                )));
            }
        };
        // No user:password@ in the URL: it would end up in error messages.
        let authority = uri.authority().map(|a| a.as_str());
        if authority.is_none_or(|a| a.contains('@')) || uri.query().is_some() {
            return Err(ManagementError::Config(format!(
                "{base_url}: need scheme://host[:port][/prefix]"
            )));
        }
        let tls = if https {
            tls_client_config(ca_pem)
        } else {
            config_with_roots(rustls::RootCertStore::empty()) // never used
        };
        let tls = tls.map_err(ManagementError::Config)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let builder = if https {
            builder.https_only()
        } else {
            builder.https_or_http()
        };
        let http = Client::builder(TokioExecutor::new()).build(builder.enable_http1().build());
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut auth = HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
            ManagementError::Config("user or password holds invalid characters".into())
        })?;
        auth.set_sensitive(true);
        Ok(Self {
            http,
            base: base.to_string(),
            auth,
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET /api/overview`.
    pub async fn overview(&self) -> Result<Overview> {
        let path = "/api/overview?columns=rabbitmq_version,management_version,cluster_name,\
                    product_name,erlang_version,node";
        self.get_required(path).await
    }

    /// `GET /api/nodes`: every cluster node and whether it runs.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.get_required("/api/nodes?columns=name,running").await
    }

    /// One queue, or `None` when it (or the vhost) does not exist.
    pub async fn queue(&self, vhost: &str, name: &str) -> Result<Option<QueueInfo>> {
        let path = format!(
            "{}?columns={QUEUE_COLUMNS}",
            api_path(&["queues", vhost, name])
        );
        Ok(self
            .get::<QueueInfo>(&path)
            .await?
            .map(QueueInfo::fill_type))
    }

    /// Every queue of a vhost, in one request.
    pub async fn queues(&self, vhost: &str) -> Result<Vec<QueueInfo>> {
        let path = format!("{}?columns={QUEUE_COLUMNS}", api_path(&["queues", vhost]));
        let queues: Vec<QueueInfo> = self.get_required(&path).await?;
        Ok(queues.into_iter().map(QueueInfo::fill_type).collect())
    }

    /// Every queue of a vhost with only its depth figures and acknowledgement count, in one
    /// request: what the autoscaler reads.
    pub async fn queue_depths(&self, vhost: &str) -> Result<Vec<QueueDepth>> {
        let path = format!(
            "{}?columns=name,messages_ready,messages_unacknowledged,message_stats.ack",
            api_path(&["queues", vhost])
        );
        self.get_required(&path).await
    }

    /// Declares a queue (not auto-delete); true when it was created, false when an equivalent
    /// one existed. A differing existing queue is a 400 `Status` ("inequivalent arg"). A
    /// quorum queue declare cut off by the timeout may leave a broken queue: see `state`.
    pub async fn declare_queue(
        &self,
        vhost: &str,
        name: &str,
        durable: bool,
        arguments: &Map<String, Value>,
    ) -> Result<bool> {
        let body = json!({"durable": durable, "auto_delete": false, "arguments": arguments});
        self.put(&api_path(&["queues", vhost, name]), body).await
    }

    /// Deletes a queue and its messages; false when it did not exist.
    pub async fn delete_queue(&self, vhost: &str, name: &str) -> Result<bool> {
        self.delete(&api_path(&["queues", vhost, name])).await
    }

    /// Deletes a queue only if it holds no messages, as the server sees it at that moment:
    /// `Ok(false)` when it does not exist, a 400 `Status` when it is not empty.
    pub async fn delete_queue_if_empty(&self, vhost: &str, name: &str) -> Result<bool> {
        let path = format!("{}?if-empty=true", api_path(&["queues", vhost, name]));
        self.delete(&path).await
    }

    /// Every exchange of a vhost, in one request.
    pub async fn exchanges(&self, vhost: &str) -> Result<Vec<ExchangeInfo>> {
        let path = format!(
            "{}?columns=name,type,durable,arguments",
            api_path(&["exchanges", vhost])
        );
        self.get_required(&path).await
    }

    /// One exchange, or `None`. The empty name is the default exchange (`amq.default`).
    pub async fn exchange(&self, vhost: &str, name: &str) -> Result<Option<ExchangeInfo>> {
        let path = api_path(&["exchanges", vhost, exchange_segment(name)]);
        self.get(&path).await
    }

    /// Declares an exchange (not auto-delete, not internal); true when it was created.
    pub async fn declare_exchange(
        &self,
        vhost: &str,
        name: &str,
        exchange_type: &str,
        durable: bool,
        arguments: &Map<String, Value>,
    ) -> Result<bool> {
        let body = json!({"type": exchange_type, "durable": durable, "auto_delete": false,
                          "internal": false, "arguments": arguments});
        self.put(&api_path(&["exchanges", vhost, name]), body).await
    }

    /// Deletes an exchange and its bindings; false when it did not exist.
    pub async fn delete_exchange(&self, vhost: &str, name: &str) -> Result<bool> {
        self.delete(&api_path(&["exchanges", vhost, name])).await
    }

    /// Creates a virtual host (idempotent) and gives `user` every permission in it.
    pub async fn put_vhost(&self, vhost: &str, user: &str) -> Result<()> {
        self.put(&api_path(&["vhosts", vhost]), json!({})).await?;
        let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
        self.put(&api_path(&["permissions", vhost, user]), all)
            .await?;
        Ok(())
    }

    /// Deletes a virtual host and everything in it; false when it did not exist.
    pub async fn delete_vhost(&self, vhost: &str) -> Result<bool> {
        self.delete(&api_path(&["vhosts", vhost])).await
    }

    /// Removes every ready message of a queue.
    pub async fn purge_queue(&self, vhost: &str, name: &str) -> Result<bool> {
        self.delete(&api_path(&["queues", vhost, name, "contents"]))
            .await
    }

    /// Every binding of a vhost, in one request.
    pub async fn bindings(&self, vhost: &str) -> Result<Vec<Binding>> {
        self.get_required(&api_path(&["bindings", vhost])).await
    }

    /// Every binding whose source is `exchange` (empty when it does not exist).
    pub async fn bindings_from_exchange(
        &self,
        vhost: &str,
        exchange: &str,
    ) -> Result<Vec<Binding>> {
        let path = api_path(&["exchanges", vhost, exchange, "bindings", "source"]);
        Ok(self.get(&path).await?.unwrap_or_default())
    }

    /// The bindings from `exchange` to `queue` (empty when either does not exist).
    pub async fn bindings_from_exchange_to_queue(
        &self,
        vhost: &str,
        exchange: &str,
        queue: &str,
    ) -> Result<Vec<Binding>> {
        self.get_required(&binding_path(vhost, exchange, "q", queue, None))
            .await
    }

    /// Binds `queue` to `exchange` with `routing_key` (idempotent).
    pub async fn bind_queue(
        &self,
        vhost: &str,
        exchange: &str,
        queue: &str,
        key: &str,
    ) -> Result<()> {
        self.bind(binding_path(vhost, exchange, "q", queue, None), key)
            .await
    }

    /// Removes the binding named by `properties_key`; false when it did not exist.
    pub async fn unbind_queue(
        &self,
        vhost: &str,
        exchange: &str,
        queue: &str,
        properties_key: &str,
    ) -> Result<bool> {
        self.delete(&binding_path(
            vhost,
            exchange,
            "q",
            queue,
            Some(properties_key),
        ))
        .await
    }

    /// The bindings from exchange `source` to exchange `destination`.
    pub async fn bindings_between_exchanges(
        &self,
        vhost: &str,
        source: &str,
        destination: &str,
    ) -> Result<Vec<Binding>> {
        self.get_required(&binding_path(vhost, source, "e", destination, None))
            .await
    }

    /// Binds exchange `destination` to exchange `source` with `routing_key` (idempotent).
    pub async fn bind_exchange(
        &self,
        vhost: &str,
        source: &str,
        destination: &str,
        key: &str,
    ) -> Result<()> {
        self.bind(binding_path(vhost, source, "e", destination, None), key)
            .await
    }

    /// Removes an exchange-to-exchange binding; false when it did not exist.
    pub async fn unbind_exchange(
        &self,
        vhost: &str,
        source: &str,
        destination: &str,
        properties_key: &str,
    ) -> Result<bool> {
        self.delete(&binding_path(
            vhost,
            source,
            "e",
            destination,
            Some(properties_key),
        ))
        .await
    }

    /// Every policy of a vhost, in one request.
    pub async fn policies(&self, vhost: &str) -> Result<Vec<NamedPolicy>> {
        self.get_required(&api_path(&["policies", vhost])).await
    }

    /// One policy, or `None`.
    pub async fn policy(&self, vhost: &str, name: &str) -> Result<Option<Policy>> {
        self.get(&api_path(&["policies", vhost, name])).await
    }

    /// Creates or replaces a policy (needs the `policymaker` or `administrator` tag); true
    /// when it was created. Unknown or ill-typed definition keys are a 400 `Status`.
    pub async fn put_policy(&self, vhost: &str, name: &str, policy: &Policy) -> Result<bool> {
        let body =
            serde_json::to_value(policy).map_err(|e| ManagementError::Decode(e.to_string()))?;
        self.put(&api_path(&["policies", vhost, name]), body).await
    }

    /// A user, or `None`.
    pub async fn user(&self, name: &str) -> Result<Option<User>> {
        self.get(&api_path(&["users", name])).await
    }

    /// Creates or replaces a user with `password` and `tags` (needs the `administrator` tag);
    /// true when it was created. Replacing one closes none of its connections.
    pub async fn put_user(&self, name: &str, password: &str, tags: &[&str]) -> Result<bool> {
        let body = json!({"password": password, "tags": tags.join(",")});
        self.put(&api_path(&["users", name]), body).await
    }

    /// Deletes a user, which closes its connections; false when it did not exist.
    pub async fn delete_user(&self, name: &str) -> Result<bool> {
        self.delete(&api_path(&["users", name])).await
    }

    /// What `user` may do in `vhost`, or `None` when it may do nothing there.
    pub async fn permissions(&self, vhost: &str, user: &str) -> Result<Option<Permissions>> {
        self.get(&api_path(&["permissions", vhost, user])).await
    }

    /// Sets what `user` may do in `vhost`.
    pub async fn put_permissions(
        &self,
        vhost: &str,
        user: &str,
        permissions: &Permissions,
    ) -> Result<()> {
        let body = serde_json::to_value(permissions)
            .map_err(|e| ManagementError::Decode(e.to_string()))?;
        self.put(&api_path(&["permissions", vhost, user]), body)
            .await
            .map(drop)
    }

    /// Deletes a policy; false when it did not exist.
    pub async fn delete_policy(&self, vhost: &str, name: &str) -> Result<bool> {
        self.delete(&api_path(&["policies", vhost, name])).await
    }

    /// Publishes a text message (for tests); answers whether any queue took it. A queue that
    /// refuses it (`reject-publish` limit) makes this a 400 `Status`.
    pub async fn publish(
        &self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        payload: &str,
        headers: &Map<String, Value>,
    ) -> Result<bool> {
        let body = json!({"routing_key": routing_key, "payload": payload, "payload_encoding": "string",
                          "properties": {"headers": headers}});
        let path = api_path(&["exchanges", vhost, exchange_segment(exchange), "publish"]);
        let routed: Routed = self.call(Method::POST, &path, Some(body)).await?;
        Ok(routed.routed)
    }

    /// Takes up to `count` messages off a queue (for tests); with `requeue` they go back.
    pub async fn get_messages(
        &self,
        vhost: &str,
        queue: &str,
        count: u32,
        requeue: bool,
    ) -> Result<Vec<Message>> {
        let ackmode = ["ack_requeue_false", "ack_requeue_true"][usize::from(requeue)];
        let body = json!({"count": count, "ackmode": ackmode, "encoding": "auto"});
        let path = api_path(&["queues", vhost, queue, "get"]);
        self.call(Method::POST, &path, Some(body)).await
    }

    /// PUT; true when the object was created (201), false when it was updated (204).
    async fn put(&self, path: &str, body: Value) -> Result<bool> {
        let status = self.send(Method::PUT, path, Some(body)).await?;
        Ok(status == StatusCode::CREATED)
    }

    /// POST of a binding with `routing_key` and no arguments.
    async fn bind(&self, path: String, routing_key: &str) -> Result<()> {
        let body = json!({"routing_key": routing_key, "arguments": {}});
        self.send(Method::POST, &path, Some(body)).await.map(drop)
    }

    /// GET that must find its object.
    async fn get_required<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None).await
    }

    /// GET; `None` on 404.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.call(Method::GET, path, None).await {
            Err(ManagementError::Status { code: 404, .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    /// DELETE; false on 404.
    async fn delete(&self, path: &str) -> Result<bool> {
        match self.send(Method::DELETE, path, None).await {
            Err(ManagementError::Status { code: 404, .. }) => Ok(false),
            other => other.map(|_| true),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let (status, bytes) = self.request(method, path, body).await?;
        check(status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| ManagementError::Decode(format!("{path}: {e}")))
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Result<StatusCode> {
        let (status, bytes) = self.request(method, path, body).await?;
        check(status, &bytes).map(|()| status)
    }

    /// One request; `Unreachable` for anything but an HTTP answer.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes)> {
        let uri = format!("{}{path}", self.base);
        // A DELETE answers with no body; the purge endpoint (`.../contents`) refuses an
        // `Accept: application/json` with 406.
        let accept = if method == Method::DELETE {
            "*/*"
        } else {
            "application/json"
        };
        let mut request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(AUTHORIZATION, self.auth.clone())
            .header(ACCEPT, accept);
        let body = match body {
            Some(value) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(value.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| ManagementError::Config(format!("{uri}: {e}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| transport_error(&uri, &e))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport_error(&uri, &e))?;
            Ok((status, bytes.to_bytes()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ManagementError::Unreachable(format!(
                    "{uri}: no answer within {:?}",
                    self.timeout
                )))
            })
    }
}

/// `/api/{segment}/{segment}...`, each segment percent-encoded.
fn api_path(segments: &[&str]) -> String {
    segments
        .iter()
        .fold(String::from("/api"), |mut path, segment| {
            path.push('/');
            path.extend(utf8_percent_encode(segment, SEGMENT));
            path
        })
}

/// `/api/bindings/{vhost}/e/{source}/{q|e}/{destination}[/{properties_key}]`.
fn binding_path(
    vhost: &str,
    source: &str,
    kind: &str,
    destination: &str,
    key: Option<&str>,
) -> String {
    let mut segments = vec!["bindings", vhost, "e", source, kind, destination];
    segments.extend(key);
    api_path(&segments)
}

/// The management API's name for the default exchange.
fn exchange_segment(name: &str) -> &str {
    if name.is_empty() { "amq.default" } else { name }
}

/// `Ok` for 2xx, else the error the answer stands for.
fn check(status: StatusCode, body: &[u8]) -> Result<()> {
    if status.is_success() {
        return Ok(());
    }
    let reason = reason(status, body);
    Err(match status.as_u16() {
        401 | 403 => ManagementError::Unauthorized(reason),
        code => ManagementError::Status { code, reason },
    })
}

/// RabbitMQ's `reason` (HTML-escaped by the API), else `error`, else the body or status text.
fn reason(status: StatusCode, body: &[u8]) -> String {
    let json: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    let field = |name| {
        json.as_ref()
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .map(unescape_html)
    };
    let text = String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(300)
        .collect::<String>();
    field("reason")
        .or_else(|| field("error"))
        .filter(|r| !r.is_empty())
        .or(Some(text).filter(|t| !t.is_empty()))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("no reason").to_string())
}

fn unescape_html(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// A transport error with its whole cause chain (hyper's own message is only "client error").
fn transport_error(uri: &str, error: &(dyn std::error::Error + 'static)) -> ManagementError {
    let mut message = format!("{uri}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    ManagementError::Unreachable(message)
}

#[cfg(test)]
mod tests;
