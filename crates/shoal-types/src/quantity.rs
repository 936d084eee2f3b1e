//! Resource quantities as users write them: cpu as cores or millicores
//! (`0.5`, `"500m"`, `2`), memory as bytes or with a unit (`"64Mi"`, `"1G"`).

/// Parses a cpu quantity into millicores: `"250m"`, `"0.5"`, `"2"`.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Some(millis) = text.strip_suffix('m') {
        return millis.parse::<u64>().map_err(|_| {
            format!(
                "`{text}` is not a cpu quantity; write millicores like \"250m\" or cores like 0.25"
            )
        });
    }
    let cores: f64 = text.parse().map_err(|_| {
        format!("`{text}` is not a cpu quantity; write millicores like \"250m\" or cores like 0.25")
    })?;
    if !cores.is_finite() || cores < 0.0 {
        return Err(format!(
            "cpu must be a positive number of cores, got `{text}`"
        ));
    }
    let millis = (cores * 1000.0).round();
    if millis > u64::MAX as f64 / 2.0 {
        return Err(format!("cpu `{text}` is too large"));
    }
    Ok(millis as u64)
}

/// Parses a memory quantity into bytes: `"64Mi"`, `"1G"`, `"1048576"`.
pub fn parse_memory_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "T" => 1000_u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
            "`{text}` has an unknown unit `{unit}`; use bytes or one of Ki, Mi, Gi, Ti, k, M, G, T"
        ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a memory quantity; write bytes or e.g. \"64Mi\""))?;
    let bytes = (value * multiplier as f64).round();
    if !bytes.is_finite() || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("memory `{text}` is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_cpu_millis("250m"), Ok(250));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert!(parse_cpu_millis("-1").is_err());
        assert!(parse_cpu_millis("abc").is_err());
        assert!(parse_cpu_millis("1.5m").is_err());
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse_memory_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_memory_bytes("1.5Ki"), Ok(1536));
        assert!(parse_memory_bytes("12XB").is_err());
        assert!(parse_memory_bytes("Mi").is_err());
    }
}
