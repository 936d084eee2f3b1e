use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cli::RmArgs;

pub async fn run(args: RmArgs) -> anyhow::Result<ExitCode> {
    let client = super::client(&args.target)?;
    client.remove_app(&args.app).await?;
    if args.detach {
        println!("app {} removed; its containers are stopping", args.app);
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    loop {
        let left = client.tasks(Some(&args.app)).await?.len();
        if left == 0 {
            println!("app {} removed", args.app);
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() > args.timeout {
            eprintln!(
                "error: app {} removed but {left} tasks have not stopped after {}s; see `shoal ps`",
                args.app,
                args.timeout.as_secs()
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
