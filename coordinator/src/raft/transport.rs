//! Moving raft messages between replicas.
//!
//! [`Transport`] is the seam: the raft loop hands it outgoing messages and never waits.
//! [`GrpcTransport`] sends them over mutual TLS (coordinator certificates only), with one cached
//! channel and one ordered sender task per peer; it reports unreachable peers and snapshot
//! delivery back to the loop. [`Faults`] injects isolation, loss and delay in both directions for
//! tests (enabled per replica with `--enable-fault-injection`).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cassette_common::tls::{self, ChannelTimeouts, Role, TlsMode};
use cassette_proto::v1 as pb;
use raft::prelude::Message;
use tokio::sync::mpsc;

use super::node::{Input, encode_message, is_snapshot};

/// Carries raft messages to other replicas.
///
/// Contract: `send` never blocks and may drop messages (raft retransmits); messages to one
/// replica are delivered in the order given, or not at all.
pub trait Transport: Send + Sync {
    /// Queues messages (each names its recipient).
    fn send(&self, msgs: Vec<Message>);
    /// The current peer table (id → address), after a membership change or snapshot.
    fn update_peers(&self, peers: &BTreeMap<u64, String>);
    /// The group this replica belongs to (known after bootstrap or the first snapshot).
    fn set_group(&self, _group: &str) {}
}

/// Fault injection for tests: applied to outgoing and incoming raft messages.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<FaultState>,
}

/// The injected faults.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultState {
    /// Drop everything to and from this replica.
    pub isolate: bool,
    /// Fraction of messages dropped in each direction.
    pub drop_rate: f64,
    /// Delay before each outgoing batch.
    pub delay: Duration,
}

impl Faults {
    /// Replaces the faults.
    pub fn set(&self, f: FaultState) {
        tracing::warn!(?f, "raft transport faults changed");
        *self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = f;
    }

    /// The current faults.
    pub fn get(&self) -> FaultState {
        *self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether to drop one message now.
    pub fn drop_one(&self) -> bool {
        let f = self.get();
        f.isolate || (f.drop_rate > 0.0 && rand::random::<f64>() < f.drop_rate)
    }
}

struct PeerLink {
    address: String,
    queue: mpsc::Sender<Message>,
}

/// The gRPC transport.
pub struct GrpcTransport {
    id: u64,
    address: String,
    tls: TlsMode,
    runtime: tokio::runtime::Handle,
    node: Sender<Input>,
    faults: Arc<Faults>,
    links: Mutex<HashMap<u64, PeerLink>>,
    /// Addresses learnt from incoming batches, for replicas not (yet) in the peer table.
    learnt: Mutex<HashMap<u64, String>>,
    known: Mutex<BTreeMap<u64, String>>,
    group: Arc<Mutex<String>>,
    queue_len: usize,
    /// Largest batch sent (the receiver's limit, `limits.raft_message_bytes`).
    max_message_bytes: usize,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport").field("id", &self.id).field("address", &self.address).finish()
    }
}

impl GrpcTransport {
    /// A transport for replica `id` serving at `address`, sending batches of at most
    /// `max_message_bytes`. Must be created inside a tokio runtime.
    pub fn new(
        id: u64,
        address: String,
        tls: TlsMode,
        node: Sender<Input>,
        faults: Arc<Faults>,
        max_message_bytes: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            address,
            tls,
            runtime: tokio::runtime::Handle::current(),
            node,
            faults,
            links: Mutex::new(HashMap::new()),
            learnt: Mutex::new(HashMap::new()),
            known: Mutex::new(BTreeMap::new()),
            group: Arc::new(Mutex::new(String::new())),
            queue_len: 4096,
            max_message_bytes,
        })
    }

    /// This replica's group id (empty until known).
    pub fn group(&self) -> String {
        self.group.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Notes the address a replica sent from (a replica that is joining knows no peers yet).
    pub fn learn(&self, id: u64, address: &str) {
        if id == self.id || address.is_empty() {
            return;
        }
        let known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(&id);
        if !known {
            let mut l = self.learnt.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if l.get(&id).map(String::as_str) != Some(address) {
                l.insert(id, address.to_owned());
            }
        }
    }

    /// The address of replica `id` in the membership this replica knows (not learnt ones).
    pub fn member_address(&self, id: u64) -> Option<String> {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).cloned()
    }

    fn address_of(&self, id: u64) -> Option<String> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
            .or_else(|| self.learnt.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).cloned())
    }

    fn link(&self, id: u64) -> Option<mpsc::Sender<Message>> {
        let address = self.address_of(id)?;
        let mut links = self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(l) = links.get(&id)
            && l.address == address
            && !l.queue.is_closed()
        {
            return Some(l.queue.clone());
        }
        // Called from the raft thread: the channel spawns its worker on our runtime.
        let _rt = self.runtime.enter();
        let channel = match tls::channel(
            &address,
            &self.tls,
            Role::Coordinator,
            ChannelTimeouts { connect: Duration::from_secs(1), request: Some(Duration::from_secs(60)) },
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(peer = id, %address, error = %e, "cannot reach replica");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(self.queue_len);
        let sender = PeerSender {
            from: self.id,
            from_address: self.address.clone(),
            to: id,
            address: address.clone(),
            client: pb::raft_transport_client::RaftTransportClient::new(channel)
                .max_encoding_message_size(self.max_message_bytes),
            node: self.node.clone(),
            faults: Arc::clone(&self.faults),
            group: Arc::clone(&self.group),
        };
        self.runtime.spawn(sender.run(rx));
        links.insert(id, PeerLink { address, queue: tx.clone() });
        Some(tx)
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let snapshot = is_snapshot(&m);
            let Some(q) = self.link(to) else {
                let _ = self.node.send(Input::Unreachable(to));
                if snapshot {
                    let _ = self.node.send(Input::SnapshotSent(to, false));
                }
                continue;
            };
            if q.try_send(m).is_err() {
                // The peer is slow or down and its queue is full: drop, raft will retry.
                let _ = self.node.send(Input::Unreachable(to));
                if snapshot {
                    let _ = self.node.send(Input::SnapshotSent(to, false));
                }
            }
        }
    }

    fn update_peers(&self, peers: &BTreeMap<u64, String>) {
        let peers: BTreeMap<u64, String> =
            peers.iter().filter(|(id, _)| **id != self.id).map(|(k, v)| (*k, v.clone())).collect();
        let mut links = self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        links.retain(|id, l| {
            peers.get(id) == Some(&l.address)
                || !peers.contains_key(id)
                    && self.learnt.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(id)
        });
        *self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = peers;
    }

    fn set_group(&self, group: &str) {
        *self.group.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = group.to_owned();
    }
}

struct PeerSender {
    from: u64,
    from_address: String,
    to: u64,
    address: String,
    client: pb::raft_transport_client::RaftTransportClient<tonic::transport::Channel>,
    node: Sender<Input>,
    faults: Arc<Faults>,
    group: Arc<Mutex<String>>,
}

impl PeerSender {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut failing = false;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let faults = self.faults.get();
            if faults.delay > Duration::ZERO {
                tokio::time::sleep(faults.delay).await;
            }
            let snapshots: Vec<u64> = batch.iter().filter(|m| is_snapshot(m)).map(|m| m.to).collect();
            let messages: Vec<Vec<u8>> = batch.iter().filter(|_| !self.faults.drop_one()).map(encode_message).collect();
            if messages.is_empty() {
                continue;
            }
            let group = self.group.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let req = pb::RaftBatch {
                from: self.from,
                from_address: self.from_address.clone(),
                to: self.to,
                messages,
                group,
            };
            match self.client.send(req).await {
                Ok(_) => {
                    if failing {
                        tracing::info!(peer = self.to, address = %self.address, "replica reachable again");
                        failing = false;
                    }
                    for to in snapshots {
                        let _ = self.node.send(Input::SnapshotSent(to, true));
                    }
                }
                Err(status) => {
                    if !failing {
                        let mut why = tls::explain_transport_error(&status, tls::Side::Client)
                            .unwrap_or_else(|| status.message().to_owned());
                        if status.code() == tonic::Code::OutOfRange {
                            why.push_str(
                                " (a batch, e.g. a snapshot, is larger than limits.raft_message_bytes: raise it on every replica)",
                            );
                        }
                        tracing::warn!(peer = self.to, address = %self.address, error = %why, "cannot send raft messages");
                        failing = true;
                    }
                    let _ = self.node.send(Input::Unreachable(self.to));
                    for to in snapshots {
                        let _ = self.node.send(Input::SnapshotSent(to, false));
                    }
                    // Do not spin against a dead peer; messages queued meanwhile are still sent.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
