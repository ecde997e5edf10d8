//! Who is responsible for each slice on the node, from the slice authority
//! (`SliceContacts`) when one is configured: its principals' names replace the comments of
//! the slice's ssh keys (the node manager's records) in the flows recorded from then on,
//! and so on the node's public page. A slice the authority does not know (another
//! authority's, or none) keeps the node manager's names.

use crate::authority::AuthorityLink;
use crate::vms::MAX_USERS;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often every slice's principals are asked again.
pub const REFRESH: Duration = Duration::from_secs(60);
/// How often the service looks for slices it has not asked about yet.
const NEW_SLICES: Duration = Duration::from_secs(1);

/// Slice name to the principals the authority names for it.
pub type Contacts = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// The names kept of an authority's answer: as many and as long as a node's own records.
fn trim(mut people: Vec<String>) -> Vec<String> {
    people.truncate(MAX_USERS);
    people.iter().map(|p| crate::vms::cut_name(p)).collect()
}

/// Keeps `contacts` current for the slices `slices()` returns, until `stop`: new slices
/// are asked about within a second, all of them again every [`REFRESH`]; while the
/// authority does not answer, what was learnt stays.
pub fn run(link: &AuthorityLink, slices: impl Fn() -> BTreeSet<String>, contacts: &Contacts, stop: &AtomicBool) {
    use plab_authority::api::calls::SliceContacts;
    use plab_authority::types::SliceContactsParams;
    let mut session: Option<(plab_authority::AuthorityClient, i64)> = None;
    let mut asked: BTreeSet<String> = BTreeSet::new();
    let mut refreshed = Instant::now();
    let mut backoff = NEW_SLICES;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let now = slices();
            let due = refreshed.elapsed() >= REFRESH;
            if !now.is_empty() && (due || !now.is_subset(&asked)) {
                // At most as many names per call as the authority takes.
                let answer = session.take().map_or_else(|| link.session(), Ok).and_then(|(mut c, node_id)| {
                    let names: Vec<String> = now.iter().cloned().collect();
                    let mut all = HashMap::new();
                    for chunk in names.chunks(plab_authority::archive::MAX_CONTACT_SLICES) {
                        let params = SliceContactsParams { node_id, slices: chunk.to_vec() };
                        all.extend(c.request::<SliceContacts>(&params)?.contacts);
                    }
                    session = Some((c, node_id));
                    Ok(all)
                });
                match answer {
                    Ok(r) => {
                        let fresh: HashMap<String, Vec<String>> = r.into_iter().map(|(s, p)| (s, trim(p))).collect();
                        let mut map = contacts.lock().unwrap_or_else(|p| p.into_inner());
                        if *map != fresh {
                            tracing::info!(
                                slices = fresh.len(),
                                "the authority names the people responsible for {} of {} slices",
                                fresh.len(),
                                now.len()
                            );
                        }
                        *map = fresh;
                        asked = now;
                        refreshed = Instant::now();
                        backoff = NEW_SLICES;
                    }
                    Err(e) => {
                        tracing::warn!(url = %link.url, "SliceContacts: {e:#}; the node manager's names stay");
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            next = Instant::now() + backoff;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names the authority's people for each VM whose slice it named.
pub fn apply<'a>(contacts: &Contacts, vms: impl IntoIterator<Item = &'a mut crate::store::VmMeta>) {
    let map = contacts.lock().unwrap_or_else(|p| p.into_inner());
    for v in vms {
        if let Some(people) = map.get(&v.slice) {
            if v.users != *people {
                v.users = people.clone();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_authoritys_names_replace_the_key_comments_of_the_slices_it_knows() {
        let contacts: Contacts = Arc::default();
        contacts.lock().unwrap().insert("plc.a".into(), trim(vec!["Alice".into(); 40]));
        let meta = |slice: &str| crate::store::VmMeta {
            vm: slice.replace('.', "_"),
            slice: slice.into(),
            users: vec!["alice@laptop".into()],
            iface: "pv1".into(),
            vm_addr: [10, 213, 0, 2].into(),
            public_addr: None,
            nat_ports: None,
            vm_net: None,
        };
        let mut vms = [meta("plc.a"), meta("other.b")];
        apply(&contacts, vms.iter_mut());
        assert_eq!(vms[0].users.len(), MAX_USERS, "as many as a node keeps");
        assert_eq!(vms[0].users[0], "Alice");
        assert_eq!(vms[1].users, ["alice@laptop"], "a slice the authority does not name keeps the node's");
        assert_eq!(trim(vec!["x".repeat(500)])[0].len(), crate::vms::MAX_USER_CHARS);
    }
}
