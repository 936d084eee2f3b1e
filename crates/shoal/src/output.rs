//! Human output: aligned tables and friendly quantities.

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

use crate::cli::Format;

/// Prints `rows` as an aligned table, or `items` as a JSON array.
pub fn print_list<T: Serialize>(
    format: Format,
    items: &[T],
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(items),
        Format::Table => {
            println!("{}", table(header, rows));
            Ok(())
        }
    }
}

pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    table
        .lines()
        .map(|line| line.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// "512 B", "64 MiB", "1.5 GiB": as the scheduler's reasons say them.
pub fn bytes(value: u64) -> String {
    shoal_state::fit::format_bytes(value)
}

/// "13 seconds", "2 minutes", "3 hours", "4 days".
pub fn age(seconds: u64) -> String {
    let (amount, unit) = match seconds {
        0..=119 => (seconds, "second"),
        120..=7199 => (seconds / 60, "minute"),
        7200..=172_799 => (seconds / 3600, "hour"),
        _ => (seconds / 86_400, "day"),
    };
    if amount == 1 {
        format!("1 {unit}")
    } else {
        format!("{amount} {unit}s")
    }
}

pub use crate::clock::now_ms;

pub fn since(at_ms: u64) -> String {
    age(now_ms().saturating_sub(at_ms) / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(age(13), "13 seconds");
        assert_eq!(age(150), "2 minutes");
        assert_eq!(age(60), "60 seconds");
        assert_eq!(age(90_000), "25 hours");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["NAME", "STATE"],
            vec![
                vec!["a".into(), "running".into()],
                vec!["longer".into(), "x".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        let column = lines[0].find("STATE").expect("header");
        assert_eq!(lines[1].find("running"), Some(column));
        assert_eq!(lines[2].find('x'), Some(column));
    }
}
