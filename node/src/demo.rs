//! `ferry demo`: the whole story on one machine in a few seconds.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("demo not written yet")
}
