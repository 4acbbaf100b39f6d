//! The operator API client: talks to any replica and follows the leader.
//!
//! A call goes to the last known leader first, then to each configured replica. A replica that
//! is not the leader answers with the leader's address, and the call is retried there. Replicas
//! that are down or know no leader are skipped; after the deadline the error lists what every
//! replica said. TLS and permission failures are not retried: they need a fix, not patience.
//!
//! Only idempotent calls are retried whatever happened ([`OperatorClient::call`]). A call that
//! is not ([`OperatorClient::call_once`]) is sent again only when it certainly did not run: a
//! follower's not-the-leader answer, a connection that could not be made, or a replica's
//! answer that it did not apply it. When it may have run (the connection broke while it was in
//! flight, or the replica could not confirm the write in time) the error is
//! [`ClientError::OutcomeUnknown`], with what to look up.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cassette_common::tls::{self, ChannelTimeouts, Role, TlsMode};
use cassette_proto::v1::operator_client::OperatorClient as PbClient;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::service::{LEADER_ADDRESS, NOT_LEADER, OUTCOME_UNKNOWN};

/// Why an operator call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No replica could serve the call in time.
    #[error("no coordinator leader reachable within {waited:?}: {}", tried.iter().map(|(a, e)| format!("{a}: {e}")).collect::<Vec<_>>().join("; "))]
    NoLeader {
        /// How long it tried.
        waited: Duration,
        /// Each address and what happened there (last attempt).
        tried: Vec<(String, String)>,
    },
    /// A TLS or permission failure: fix certificates or roles.
    #[error("{address}: {message}")]
    Denied {
        /// The replica.
        address: String,
        /// What was refused and how to fix it.
        message: String,
    },
    /// The call may or may not have taken effect; it was not sent again.
    #[error("{address}: {message}")]
    OutcomeUnknown {
        /// The replica.
        address: String,
        /// What happened and what to look up.
        message: String,
    },
    /// The replica answered with an error.
    #[error("{message}")]
    Failed {
        /// The replica.
        address: String,
        /// The gRPC code.
        code: Code,
        /// Its message.
        message: String,
    },
    /// Bad configuration (address, TLS material).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The gRPC code when a replica answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Failed { code, .. } => Some(*code),
            Self::Denied { .. } => Some(Code::PermissionDenied),
            Self::OutcomeUnknown { .. } => Some(Code::DeadlineExceeded),
            _ => None,
        }
    }
}

/// A client of the coordinator group.
pub struct OperatorClient {
    endpoints: Vec<String>,
    tls: TlsMode,
    timeouts: ChannelTimeouts,
    channels: Mutex<HashMap<String, Channel>>,
    leader: Mutex<Option<String>>,
    wait: Duration,
    request_id: String,
}

impl std::fmt::Debug for OperatorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorClient").field("endpoints", &self.endpoints).finish()
    }
}

/// Whether the status comes from a connection that could not be made (so the request was
/// never sent).
fn never_sent(s: &Status) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(c) = cur {
        if c.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        cur = c.source();
    }
    false
}

fn transport_detail(s: &Status) -> String {
    let mut parts = vec![];
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(c) = cur {
        let t = c.to_string();
        if !parts.contains(&t) {
            parts.push(t);
        }
        cur = c.source();
    }
    if parts.is_empty() { s.message().to_owned() } else { parts.join(": ") }
}

impl OperatorClient {
    /// A client of the replicas at `endpoints` that waits up to `wait` for a leader.
    pub fn new(endpoints: Vec<String>, tls: TlsMode, wait: Duration) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Config(
                "no coordinator address: pass --coordinator host:port (or set CASSETTE_COORDINATOR)".into(),
            ));
        }
        Ok(Self {
            endpoints,
            tls,
            timeouts: ChannelTimeouts { connect: Duration::from_secs(2), request: Some(Duration::from_secs(60)) },
            channels: Mutex::new(HashMap::new()),
            leader: Mutex::new(None),
            wait,
            request_id: format!("cli-{:016x}", rand::random::<u64>()),
        })
    }

    /// Uses `id` as this client's request id (see [`Self::request_id`]).
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }

    /// The id this client gives the operation it starts (`OperationStart.client_request_id`):
    /// random per client unless set, so the retries of one start are one request.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    fn client(&self, address: &str) -> Result<PbClient<Channel>, ClientError> {
        let mut ch = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = ch.get(address) {
            return Ok(PbClient::new(c.clone()));
        }
        let c = tls::channel(address, &self.tls, Role::Coordinator, self.timeouts)
            .map_err(|e| ClientError::Config(e.to_string()))?;
        ch.insert(address.to_owned(), c.clone());
        Ok(PbClient::new(c))
    }

    /// Calls one replica, without following the leader (status, fault injection).
    pub async fn at<T, F, Fut>(&self, address: &str, f: F) -> Result<T, ClientError>
    where
        F: FnOnce(PbClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        match f(self.client(address)?).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.classify(address, s, true).unwrap_or_else(|(_, msg)| ClientError::Failed {
                address: address.to_owned(),
                code: Code::Unavailable,
                message: format!("{address}: {msg}"),
            })),
        }
    }

    /// Ok(error to return now) for final failures, Err((retry, note)) for retryable ones.
    /// `idempotent`: whether sending the call again is harmless even if it ran.
    fn classify(&self, address: &str, s: Status, idempotent: bool) -> Result<ClientError, (Option<String>, String)> {
        if let Some(t) = tls::explain_transport_error(&s, tls::Side::Client) {
            return Ok(ClientError::Denied { address: address.to_owned(), message: t });
        }
        if s.metadata().contains_key(NOT_LEADER) {
            let leader = s.metadata().get(LEADER_ADDRESS).and_then(|v| v.to_str().ok()).map(str::to_owned);
            return Err((leader, s.message().to_owned()));
        }
        if s.metadata().contains_key(OUTCOME_UNKNOWN) {
            if idempotent {
                return Err((None, s.message().to_owned()));
            }
            return Ok(ClientError::OutcomeUnknown { address: address.to_owned(), message: s.message().to_owned() });
        }
        match s.code() {
            Code::PermissionDenied | Code::Unauthenticated => {
                Ok(ClientError::Denied { address: address.to_owned(), message: s.message().to_owned() })
            }
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                // A status made from a connection failure has the failure as its source; one
                // sent by a replica (e.g. "no answer within 10s") has none.
                let from_transport = std::error::Error::source(&s).is_some() || s.message().is_empty();
                if !idempotent && !never_sent(&s) && (from_transport || s.code() != Code::Unavailable) {
                    // The request may have reached the replica and run: do not send it twice.
                    return Ok(ClientError::OutcomeUnknown {
                        address: address.to_owned(),
                        message: format!(
                            "the call was interrupted ({}) after it was sent: its outcome is unknown; look at the state before sending it again",
                            if from_transport { transport_detail(&s) } else { s.message().to_owned() }
                        ),
                    });
                }
                let msg = if from_transport {
                    format!("cannot connect ({})", transport_detail(&s))
                } else {
                    s.message().to_owned()
                };
                Err((None, msg))
            }
            _ if matches!(self.tls, TlsMode::Insecure) && s.message().contains("h2 protocol error") => Ok(ClientError::Denied {
                address: address.to_owned(),
                message: "the replica does not answer in plain text: it requires mutual TLS; drop --insecure and pass --ca, --cert and --key".into(),
            }),
            code => Ok(ClientError::Failed { address: address.to_owned(), code, message: s.message().to_owned() }),
        }
    }

    /// Calls the leader, wherever it is, retrying until `wait`: for idempotent calls (reads,
    /// and writes that are harmless twice, such as an operation start with a request id).
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(PbClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_with(f, true).await
    }

    /// Calls the leader, wherever it is, for a call that must not run twice: it is sent again
    /// only when it certainly did not run (see the module documentation).
    pub async fn call_once<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(PbClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_with(f, false).await
    }

    async fn call_with<T, F, Fut>(&self, f: F, idempotent: bool) -> Result<T, ClientError>
    where
        F: Fn(PbClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let start = Instant::now();
        let mut tried: Vec<(String, String)> = Vec::new();
        let note = |tried: &mut Vec<(String, String)>, a: &str, m: String| {
            if let Some(e) = tried.iter_mut().find(|(x, _)| x == a) {
                e.1 = m;
            } else {
                tried.push((a.to_owned(), m));
            }
        };
        loop {
            let hint = self.leader.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let mut queue: Vec<String> = hint.into_iter().collect();
            queue.extend(self.endpoints.iter().cloned());
            let mut seen = std::collections::HashSet::new();
            let mut i = 0;
            while i < queue.len() {
                let address = queue[i].clone();
                i += 1;
                if !seen.insert(address.clone()) {
                    continue;
                }
                match f(self.client(&address)?).await {
                    Ok(r) => {
                        *self.leader.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(address);
                        return Ok(r.into_inner());
                    }
                    Err(s) => match self.classify(&address, s, idempotent) {
                        Ok(e) => return Err(e),
                        Err((leader, msg)) => {
                            note(&mut tried, &address, msg);
                            if let Some(l) = leader
                                && !seen.contains(&l)
                            {
                                // Try the leader next.
                                queue.insert(i, l);
                            }
                        }
                    },
                }
            }
            *self.leader.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            if start.elapsed() >= self.wait {
                return Err(ClientError::NoLeader { waited: start.elapsed(), tried });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
