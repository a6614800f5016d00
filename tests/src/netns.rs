//! Hosts in Linux network namespaces, for tests of what crosses a real
//! network stack: address changes, multicast discovery, separate segments.
//! Needs root and iproute2; `skip_reason` says why a test cannot run.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Why namespace tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespace tests need root (CI runs them as root)".into());
    }
    let probe = format!("fyprobe{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
        Ok(o) => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("iproute2 (`ip`) is not available: {e}")),
    }
}

/// Runs a command to completion; its failure is an error naming it.
pub fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("could not run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with its loopback up; `tag` keeps names apart.
    pub fn new(tag: &str) -> Result<Netns> {
        let name = format!("fy{}{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// `tc` inside the namespace.
    pub fn tc(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["netns", "exec", self.name.as_str(), "tc"];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A veth pair: `here` in this namespace, `there` in `other`, both up.
    pub fn veth(&self, here: &str, other: &Netns, there: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            here,
            "type",
            "veth",
            "peer",
            "name",
            there,
            "netns",
            &other.name,
        ])?;
        self.ip(&["link", "set", here, "up"])?;
        other.ip(&["link", "set", there, "up"])
    }

    /// Makes this namespace a LAN segment: a bridge `br0` that forwards
    /// multicast (mDNS) to every port.
    pub fn make_bridge(&self) -> Result<()> {
        self.ip(&["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        self.ip(&["link", "set", "br0", "up"])
    }

    /// Plugs `host` into this bridge: `eth0` on the host, `port` here.
    pub fn plug(&self, host: &Netns, port: &str, addr: &str) -> Result<()> {
        self.veth(port, host, "eth0")?;
        self.ip(&["link", "set", port, "master", "br0"])?;
        host.ip(&["addr", "add", addr, "dev", "eth0"])
    }

    /// Takes `port` off this bridge (the host loses its link).
    pub fn unplug(&self, port: &str) -> Result<()> {
        self.ip(&["link", "del", port])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .context("could not start a node process")?;
        Ok(Proc { child })
    }

    /// SIGTERM and wait up to 10 s; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// `ferry run` in `ns` (through `exe __ferry`, the test binary that embeds
/// the CLI), listening on 7700 on every address, logging to `log`.
pub fn ferry_run(ns: &Netns, exe: &Path, dir: &Path, log: &Path, extra: &[&str]) -> Result<Proc> {
    let mut cmd = ns.command(exe);
    cmd.arg("__ferry")
        .args(["run", "--data-dir"])
        .arg(dir)
        .args(["--listen", "0.0.0.0:7700", "--interval", "2", "--log", "info"])
        .args(extra)
        .stderr(std::fs::File::create(log).context("could not create a node log")?);
    Proc::spawn(cmd)
}
