//! `shoal dns list`: the service records the cluster serves.

use std::process::ExitCode;

use crate::cli::ListArgs;

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let records = super::client(&args.target)?.dns_records().await?;
    let rows = records
        .iter()
        .map(|r| vec![r.name.clone(), r.record_type.clone(), r.value.clone()])
        .collect();
    crate::output::print_list(
        args.output.format,
        &records,
        &["NAME", "TYPE", "VALUE"],
        rows,
    )?;
    Ok(ExitCode::SUCCESS)
}
