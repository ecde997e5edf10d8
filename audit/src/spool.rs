//! Sending stored flows on: to an IPFIX collector, to the authority's archive. The flow
//! database is the spool. Each sink has a cursor (the id of the last flow it has) that
//! moves only once a batch has gone through, so a sink that is down gets every flow
//! once it is back (at least once: a batch whose confirmation was lost goes again).
//! Flows older than `retention_days` are removed whether sent or not.

use crate::authority::AuthorityLink;
use crate::store::{FlowRecord, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Flows sent in one batch.
pub const BATCH: usize = 500;
/// Flows sent to an IPFIX collector in one round.
pub const IPFIX_BATCH: usize = 2000;
/// The longest wait before trying a sink that failed again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where flows go.
pub trait Sink {
    /// The sink's name in the spool (a new name starts a new cursor).
    fn name(&self) -> String;
    /// Whether a new sink starts with the flows stored from now on (else with all).
    fn starts_at_end(&self) -> bool;
    /// Flows sent in one batch.
    fn batch(&self) -> usize {
        BATCH
    }
    /// Sends a batch (flows with their ids in the database); an error means it may not
    /// have arrived.
    fn send(&mut self, flows: &[(i64, FlowRecord)]) -> anyhow::Result<()>;
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

/// One batch: how many flows went (0: nothing waiting).
pub fn round(store: &Mutex<Store>, sink: &mut dyn Sink) -> anyhow::Result<usize> {
    let name = sink.name();
    let batch = {
        let s = lock(store);
        let at = s.cursor(&name, sink.starts_at_end())?;
        s.after(at, sink.batch())?
    };
    let Some((last, _)) = batch.last() else { return Ok(0) };
    let last = *last;
    sink.send(&batch)?;
    lock(store).advance(&name, last)?;
    Ok(batch.len())
}

/// Sends flows to `sink` as they are stored, until `stop`; then sends what is left
/// (while the sink takes it).
pub fn run(store: &Mutex<Store>, sink: &mut dyn Sink, stop: &AtomicBool) {
    let mut backoff = Duration::from_secs(1);
    let mut failing = false;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        match round(store, sink) {
            Ok(n) => {
                if failing {
                    tracing::info!(sink = %sink.name(), "sending again");
                    failing = false;
                }
                backoff = Duration::from_secs(1);
                if n == sink.batch() {
                    continue;
                }
                if stopping {
                    return;
                }
                sleep_unless(stop, Duration::from_secs(1));
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(sink = %sink.name(), "cannot send flows, they wait in the spool: {e:#}");
                    failing = true;
                }
                if stopping {
                    return;
                }
                sleep_unless(stop, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// IPFIX to one collector.
pub struct Ipfix {
    /// The collector.
    pub collector: std::net::SocketAddr,
    /// The exporter.
    pub exporter: crate::ipfix::Exporter,
}

impl Sink for Ipfix {
    fn name(&self) -> String {
        format!("ipfix:{}", self.collector)
    }

    fn starts_at_end(&self) -> bool {
        true
    }

    /// Each round waits for the collector's host to object: big rounds keep up with a
    /// node that ends many flows (2,000 per 200 ms).
    fn batch(&self) -> usize {
        IPFIX_BATCH
    }

    fn send(&mut self, flows: &[(i64, FlowRecord)]) -> anyhow::Result<()> {
        Ok(self.exporter.send(flows.iter().map(|(_, f)| f))?)
    }
}

/// The authority's flow archive (`ArchiveFlows`), as the node's auditing service
/// ([`AuthorityLink`]); a failed upload drops the session, and the next round makes a new
/// one.
pub struct Archive {
    /// How to reach the authority.
    pub link: AuthorityLink,
    /// The flow database's id (see [`Store::epoch`]).
    pub epoch: String,
    client: Option<(plab_authority::AuthorityClient, i64)>,
}

impl Archive {
    /// An archive sink (connects on first use).
    pub fn new(link: AuthorityLink, epoch: String) -> Archive {
        Archive { link, epoch, client: None }
    }
}

impl Sink for Archive {
    fn name(&self) -> String {
        format!("archive:{}", self.link.url)
    }

    fn starts_at_end(&self) -> bool {
        false
    }

    fn send(&mut self, flows: &[(i64, FlowRecord)]) -> anyhow::Result<()> {
        use plab_authority::api::calls::ArchiveFlows;
        use plab_authority::types::{ArchiveFlowsParams, ArchivedFlow};
        let (mut client, node_id) = match self.client.take() {
            Some(c) => c,
            None => self.link.session()?,
        };
        let params = ArchiveFlowsParams {
            node_id,
            epoch: self.epoch.clone(),
            flows: flows
                .iter()
                .map(|(id, f)| ArchivedFlow { id: *id, node_id: None, flow: f.clone(), responsible: vec![] })
                .collect(),
        };
        let r = client.request::<ArchiveFlows>(&params)?;
        tracing::debug!(stored = r.stored, duplicates = r.duplicates, "archived");
        self.client = Some((client, node_id));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::flow::{Flow, FlowKey, UDP};
    use crate::store::VmMeta;

    struct Flaky {
        up: bool,
        got: Vec<u16>,
    }

    impl Sink for Flaky {
        fn name(&self) -> String {
            "test".into()
        }
        fn starts_at_end(&self) -> bool {
            false
        }
        fn send(&mut self, flows: &[(i64, FlowRecord)]) -> anyhow::Result<()> {
            anyhow::ensure!(self.up, "down");
            self.got.extend(flows.iter().map(|(_, f)| f.sport));
            Ok(())
        }
    }

    fn flows(ports: std::ops::Range<u16>) -> Vec<FlowRecord> {
        let meta = VmMeta {
            vm: "a".into(),
            slice: "plc.a".into(),
            users: vec![],
            iface: "pv1".into(),
            vm_addr: [10, 213, 0, 2].into(),
            public_addr: None,
            nat_ports: None,
            vm_net: None,
        };
        ports
            .map(|p| {
                let key =
                    FlowKey { proto: UDP, src: [10, 213, 0, 2].into(), sport: p, dst: [10, 0, 0, 1].into(), dport: 9 };
                FlowRecord::new(&Flow { key, first_ms: 1, last_ms: 2, bytes: 3, packets: 1, tcp_flags: 0 }, &meta)
            })
            .collect()
    }

    #[test]
    fn flows_wait_while_the_sink_is_down_and_all_go_once_it_is_back_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        let store = Mutex::new(Store::open(&path).unwrap());
        lock(&store).insert(&flows(0..700)).unwrap();
        let mut sink = Flaky { up: false, got: vec![] };
        assert!(round(&store, &mut sink).is_err());
        sink.up = true;
        assert_eq!(round(&store, &mut sink).unwrap(), BATCH);
        // The service restarts: the cursor is on disk.
        drop(store);
        let store = Mutex::new(Store::open(&path).unwrap());
        lock(&store).insert(&flows(700..800)).unwrap();
        assert_eq!(round(&store, &mut sink).unwrap(), 300);
        assert_eq!(round(&store, &mut sink).unwrap(), 0);
        assert_eq!(sink.got, (0..800).collect::<Vec<u16>>(), "every flow once, in order");
        // A sink that starts from now gets only what is stored after it first looks.
        struct New(Vec<u16>);
        impl Sink for New {
            fn name(&self) -> String {
                "new".into()
            }
            fn starts_at_end(&self) -> bool {
                true
            }
            fn send(&mut self, flows: &[(i64, FlowRecord)]) -> anyhow::Result<()> {
                self.0.extend(flows.iter().map(|(_, f)| f.sport));
                Ok(())
            }
        }
        let mut n = New(vec![]);
        assert_eq!(round(&store, &mut n).unwrap(), 0);
        lock(&store).insert(&flows(900..903)).unwrap();
        round(&store, &mut n).unwrap();
        assert_eq!(n.0, [900, 901, 902]);
    }
}
