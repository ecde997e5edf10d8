//! A VM's network set-up over netlink (rtnetlink) rather than by forking `ip`: on the
//! Bind path every fork counts. Network namespaces are made as iproute2 makes them
//! (`/run/netns/<name>`, a bind mount of a namespace on a shared mount point), so `ip
//! netns` and every other tool see them.
//!
//! Netlink sockets belong to the network namespace they are opened in. Each step runs on
//! a short-lived thread of its own, which first joins the namespace it works in (the
//! node's, or the VM's), so the node manager's own threads never change namespace.

use crate::backend::BackendError;
use crate::host::VmLink;
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where named network namespaces live (`ip netns`'s directory).
pub const NETNS_DIR: &str = "/run/netns";

fn err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> String {
    let what = what.into();
    move |e| format!("{what}: {e}")
}

fn backend(what: &str) -> impl FnOnce(String) -> BackendError + '_ {
    move |message| BackendError::Command { command: format!("netlink {what}"), message }
}

/// Runs `f` with a netlink handle on a thread of its own, in network namespace `ns` (the
/// caller's when `None`).
fn netlink<T: Send, F: Future<Output = Result<T, String>>>(
    ns: Option<&File>,
    f: impl FnOnce(Handle) -> F + Send,
) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = ns {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("joining the VM's network namespace: {e}"))?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| format!("netlink runtime: {e}"))?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
                tokio::spawn(conn);
                f(handle).await
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the netlink thread panicked".into()))
    })
}

/// The index of interface `name`, or `None` when there is none.
async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, String> {
    match h.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(format!("looking up {name}: {e}")),
    }
}

/// Does interface `name` exist in the calling thread's network namespace?
pub fn link_exists(name: &str) -> bool {
    netlink(None, |h| async move { index_of(&h, name).await }).ok().flatten().is_some()
}

fn ns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Does the named network namespace exist?
pub fn netns_exists(name: &str) -> bool {
    ns_path(name).exists()
}

/// Makes named network namespace `name`, as `ip netns add` does.
pub fn netns_add(name: &str) -> Result<(), BackendError> {
    use nix::mount::{mount, MsFlags};
    let dir = Path::new(NETNS_DIR);
    let io = |what: &str, e: std::io::Error| BackendError::Io(format!("{what} {}", dir.display()), e);
    std::fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
    // A shared mount point, so that namespaces mounted here appear in every mount
    // namespace (the VMs' included) that copies this one; bind it onto itself first if
    // it is no mount point yet.
    let shared = || mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    if let Err(nix::Error::EINVAL) = shared() {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| io("bind-mounting", e.into()))?;
        shared().map_err(|e| io("sharing", e.into()))?;
    }
    let path = ns_path(name);
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
            .map_err(|e| BackendError::Io(path.display().to_string(), e))?;
    }
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
            mount(Some("/proc/thread-self/ns/net"), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| format!("bind mount: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err("the namespace thread panicked".into()))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(BackendError::Command { command: format!("netns add {name}"), message: e });
    }
    Ok(())
}

/// Sets sysctl `key` (dotted) to `value` inside named network namespace `name`: from a
/// thread that joins the namespace (`/proc/sys/net` shows the reader's namespace).
pub fn sysctl(name: &str, key: &str, value: &str) -> Result<(), BackendError> {
    let ns =
        std::fs::File::open(ns_path(name)).map_err(|e| BackendError::Io(ns_path(name).display().to_string(), e))?;
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), BackendError> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| BackendError::Command { command: format!("setns {name}"), message: e.to_string() })?;
            std::fs::write(&file, value).map_err(|e| BackendError::Io(format!("{} in {name}", file.display()), e))
        })
        .join()
        .unwrap_or_else(|_| Err(BackendError::Internal("the sysctl thread panicked".into())))
    })
}

/// Removes named network namespace `name`, as `ip netns del` does; the namespace itself
/// goes when its last process does.
pub fn netns_del(name: &str) -> Result<(), BackendError> {
    let path = ns_path(name);
    if !path.exists() {
        return Ok(());
    }
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(e) => {
            return Err(BackendError::Command { command: format!("netns del {name}"), message: format!("umount: {e}") })
        }
    }
    std::fs::remove_file(&path).map_err(|e| BackendError::Io(path.display().to_string(), e))
}

fn parse_mac(mac: &str) -> Result<Vec<u8>, BackendError> {
    let bytes: Result<Vec<u8>, _> = mac.split(':').map(|b| u8::from_str_radix(b, 16)).collect();
    match bytes {
        Ok(b) if b.len() == 6 => Ok(b),
        _ => Err(BackendError::Internal(format!("{mac:?} is not a MAC address"))),
    }
}

/// Makes sure a VM's network is in place, idempotently (see [`VmLink`]).
pub fn vm_network(link: &VmLink<'_>) -> Result<(), BackendError> {
    let VmLink { netns, host_if, bridge, mac, address, prefix_len, gateway } = *link;
    // A host end left from an earlier namespace of this name (one that a crash or an
    // operator removed) has its peer elsewhere: made again with the new namespace.
    let fresh = !netns_exists(netns);
    if fresh {
        netns_add(netns)?;
    }
    let ns = File::open(ns_path(netns)).map_err(|e| BackendError::Io(ns_path(netns).display().to_string(), e))?;
    let mac = parse_mac(mac)?;
    let ns_fd = ns.as_raw_fd();
    // The node's side: the veth pair (its VM end made straight in the VM's namespace),
    // and the host end on the bridge.
    netlink(None, |h| async move {
        let bridge_index =
            index_of(&h, bridge).await?.ok_or_else(|| format!("the node bridge {bridge} does not exist"))?;
        let existing = index_of(&h, host_if).await?;
        if let (Some(i), true) = (existing, fresh) {
            h.link().del(i).execute().await.map_err(err(format!("link del {host_if} (left from an old namespace)")))?;
        }
        let host_index = match existing.filter(|_| !fresh) {
            Some(i) => i,
            None => {
                let peer = LinkUnspec::new_with_name("eth0").address(mac).setns_by_fd(ns_fd).build();
                let veth = LinkVeth::new(host_if, "eth0").set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).build();
                h.link()
                    .add(veth)
                    .execute()
                    .await
                    .map_err(err(format!("link add {host_if} type veth peer name eth0")))?;
                index_of(&h, host_if).await?.ok_or_else(|| format!("{host_if} vanished after it was made"))?
            }
        };
        h.link()
            .set(LinkUnspec::new_with_index(host_index).controller(bridge_index).up().build())
            .execute()
            .await
            .map_err(err(format!("link set {host_if} master {bridge} up")))
    })
    .map_err(backend("(node side)"))?;
    // The VM's side: loopback, address, link and default route.
    netlink(Some(&ns), |h| async move {
        let lo = index_of(&h, "lo").await?.ok_or("no loopback interface")?;
        h.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await.map_err(err("link set lo up"))?;
        let eth0 = index_of(&h, "eth0").await?.ok_or("the VM's eth0 is missing")?;
        h.address()
            .add(eth0, IpAddr::V4(address), prefix_len)
            .replace()
            .execute()
            .await
            .map_err(err(format!("addr replace {address}/{prefix_len} dev eth0")))?;
        h.link().set(LinkUnspec::new_with_index(eth0).up().build()).execute().await.map_err(err("link set eth0 up"))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(eth0).build();
        h.route().add(route).replace().execute().await.map_err(err(format!("route replace default via {gateway}")))
    })
    .map_err(backend("(VM side)"))
}

/// Puts interface `dev` on `bridge` and brings it up.
pub fn enslave(dev: &str, bridge: &str) -> Result<(), BackendError> {
    netlink(None, |h| async move {
        let bridge_index =
            index_of(&h, bridge).await?.ok_or_else(|| format!("the node bridge {bridge} does not exist"))?;
        let index = index_of(&h, dev).await?.ok_or_else(|| format!("Cannot find device \"{dev}\""))?;
        h.link()
            .set(LinkUnspec::new_with_index(index).controller(bridge_index).up().build())
            .execute()
            .await
            .map_err(err(format!("link set {dev} master {bridge} up")))
    })
    .map_err(backend("enslave"))
}

/// Moves interface `dev` from the network namespace at `from` (a path such as
/// `/proc/1/ns/net`) into the named namespace `to`.
pub fn move_link(dev: &str, from: &Path, to: &str) -> Result<(), BackendError> {
    let open = |p: &Path| File::open(p).map_err(|e| BackendError::Io(p.display().to_string(), e));
    let (from_ns, to_ns) = (open(from)?, open(&ns_path(to))?);
    let to_fd = to_ns.as_raw_fd();
    netlink(Some(&from_ns), |h| async move {
        let index = index_of(&h, dev).await?.ok_or_else(|| format!("Cannot find device \"{dev}\""))?;
        h.link()
            .set(LinkUnspec::new_with_index(index).setns_by_fd(to_fd).build())
            .execute()
            .await
            .map_err(err(format!("link set {dev} netns {to}")))
    })
    .map_err(backend("move_link"))
}
