use std::process::ExitCode;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::cli::LogsArgs;

pub async fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = super::client(&args.node)?;
    let mut stream = Box::pin(
        client
            .logs(&args.target, args.follow, args.tail, false)
            .await?,
    );
    let mut stdout = tokio::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| anyhow::anyhow!("log stream broke off: {error}"))?;
        let written = match stdout.write_all(&chunk).await {
            Ok(()) => stdout.flush().await,
            Err(error) => Err(error),
        };
        match written {
            Ok(()) => {}
            // The reader went away (`shoal logs APP | head`): it has what
            // it wanted.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(error) => return Err(error.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
