//! `zapgate-sim [--listen ADDR]`: the simulated providers as a process.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:9099".to_owned();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or_else(|| anyhow::anyhow!("--listen needs an address"))?,
            "-h" | "--help" => {
                println!("zapgate-sim [--listen ADDR]   simulated WhatsApp providers (Cloud API); see the crate docs");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let (addr, _sim) = zapgate_sim::start(listen.parse()?).await?;
        eprintln!("zapgate-sim listening on http://{addr}");
        std::future::pending::<()>().await;
        Ok(())
    })
}
