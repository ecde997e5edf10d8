//! An emulated Xen host for tests and benchmarks (issue 11): Debian's Xen 4.17 with a PV
//! dom0 under QEMU (TCG), built by `images/build-xen-host.sh` and run by
//! `images/xen-host.sh`; the node manager runs in dom0 from the host's build (9p).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The repository (images/ lives there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The emulated host, stopped (and its namespace removed) when dropped.
pub struct XenHost {
    env: Vec<(String, String)>,
}

impl XenHost {
    pub fn script(&self, args: &[&str]) -> Output {
        let mut c = Command::new("bash");
        c.arg(repo().join("images/xen-host.sh")).args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// Runs `cmd` in dom0 (sh -c); its status and output.
    pub fn sh(&self, cmd: &str) -> (bool, String) {
        let o = self.script(&["ssh", cmd]);
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    }

    /// Runs `cmd` in dom0 and insists that it works.
    pub fn ok(&self, cmd: &str) -> String {
        let (ok, out) = self.sh(cmd);
        assert!(ok, "in dom0: {cmd}:\n{out}\nnode manager's log:\n{}", self.sh("tail -n 40 /var/log/plab-nm.log").1);
        out
    }

    /// `plab --json nm ARGS` in dom0.
    pub fn nm(&self, args: &str) -> Value {
        let out = self.ok(&format!("PLAB_NM_SOCKET=/run/plab/nm.sock /mnt/plab/plab --json nm {args}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("plab nm {args}: {e}: {out}"))
    }

    /// The owner's pool `pool` (a PoolRSpec, for slice `plc.xen`) and the slice RSpec
    /// `slice` split from it, in dom0's node manager (written to `/root/NAME.pool.xml` and
    /// `/root/NAME.xml`): the pool's rcap and the slice's, ready to bind.
    pub fn split_pool(&self, name: &str, pool: &str, slice: &str) -> (String, String) {
        let (p, s) = (format!("/root/{name}.pool.xml"), format!("/root/{name}.xml"));
        self.ok(&format!("cat > {p} <<'EOF'\n{pool}\nEOF\ncat > {s} <<'EOF'\n{slice}\nEOF"));
        let root = self.nm(&format!("create-pool {p} plc.xen"))["rcap"].as_str().unwrap().to_owned();
        let sub = self.nm(&format!("split-pool {root} {s}"))["rcap"].as_str().unwrap().to_owned();
        (root, sub)
    }

    pub fn start_nm(&self) {
        self.ok("rm -f /run/plab/nm.sock; mkdir -p /run/plab; \
             setsid nohup /mnt/plab/plab-nm serve --config /etc/plab/nm.toml >>/var/log/plab-nm.log 2>&1 </dev/null &");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.sh("test -S /run/plab/nm.sock").0 {
            assert!(
                Instant::now() < deadline,
                "plab-nm did not start in dom0:\n{}",
                self.sh("cat /var/log/plab-nm.log").1
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until OpenSSH logs in to the guest at `addr` as `login` from dom0; how long it took.
    pub fn ssh_guest(&self, login: &str, addr: &str, cmd: &str, limit: Duration) -> (String, Duration) {
        let started = Instant::now();
        let ssh = format!(
            "ssh -i /root/slice_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
             -o ConnectTimeout=5 -o LogLevel=ERROR {login}@{addr} '{cmd}'"
        );
        loop {
            let (ok, out) = self.sh(&ssh);
            if ok {
                return (out, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "no ssh login into the guest within {limit:?}: {out}\nconsole:\n{}",
                self.sh("tail -n 30 /var/log/xen/console/guest-*.log").1
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

impl Drop for XenHost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the emulated host's console:\n{}",
                String::from_utf8_lossy(&self.script(&["console", "60"]).stdout)
            );
        }
        let _ = self.script(&["stop"]);
    }
}

impl XenHost {
    /// Builds the image when missing (cached), boots the emulated host with the build
    /// and the guest image shared into dom0 (`/mnt/plab`, `/mnt/images`), writes the
    /// node manager's settings and the slice key `key` there; how long dom0 took.
    pub fn boot(key: &Path) -> (XenHost, Duration) {
        XenHost::boot_sharing(key, &[])
    }

    /// As [`XenHost::boot`], with more directories shared into dom0 (`TAG=DIR:ro`, at
    /// `/mnt/TAG`).
    pub fn boot_sharing(key: &Path, extra: &[&str]) -> (XenHost, Duration) {
        let build = Command::new("bash").arg(repo().join("images/build-xen-host.sh")).status().unwrap();
        assert!(build.success(), "images/build-xen-host.sh failed");
        let guest = std::env::var("PLAB_GUEST_DIR").unwrap_or_else(|_| "/var/cache/plab/images/guest-bookworm".into());
        assert!(
            Path::new(&guest).join("base.qcow2").exists(),
            "the guest image is missing: bash images/build-guest.sh"
        );
        let bins = crate::bin("plab-nm").parent().unwrap().to_owned();
        let p = std::process::id();
        let host = XenHost {
            env: vec![
                ("PLAB_XENHOST_NETNS".into(), format!("plab-xen-{p}")),
                ("PLAB_XENHOST_RUN".into(), format!("/var/tmp/plab-xenhost-{p}")),
                (
                    "PLAB_XENHOST_SHARES".into(),
                    format!("plab={}:ro images={guest}:ro {}", bins.display(), extra.join(" ")),
                ),
            ],
        };
        let t0 = Instant::now();
        let o = host.script(&["start"]);
        assert!(o.status.success(), "the emulated Xen host did not boot:\n{}", String::from_utf8_lossy(&o.stderr));
        let booted = t0.elapsed();
        let o = host.script(&["scp", key.to_str().unwrap(), ":/root/slice_key"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        host.ok("chmod 600 /root/slice_key");
        host.ok("mkdir -p /etc/plab /var/lib/plab && cat > /etc/plab/nm.toml <<'EOF'\n\
             state_dir = \"/var/lib/plab/nm\"\nsocket = \"/run/plab/nm.sock\"\n\
             guest_image = \"/mnt/images\"\nguest_dir = \"/var/lib/plab/guests\"\nstop_timeout_secs = 60\n\
             EOF");
        (host, booted)
    }
}
