//! Durations written as strings: "500ms", "30s", "5m", "1h", "1m30s".

/// Parses a duration into milliseconds. Units: `ms`, `s`, `m`, `h`, `d`, each at most once, in
/// decreasing order, each with a whole number: "1h30m", "2s500ms".
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let hint = "write it as a number with a unit: \"500ms\", \"30s\", \"5m\", \"1h\", \"1m30s\"";
    if text.trim().is_empty() {
        return Err(format!("empty duration; {hint}"));
    }
    let mut rest = text;
    let mut total: u64 = 0;
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration \"{text}\"; {hint}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration \"{text}\" is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                format!("missing unit in duration \"{text}\"; {hint}")
            } else {
                format!("unknown unit `{unit}` in duration \"{text}\"; units are `ms`, `s`, `m`, `h`, `d`")
            });
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(format!(
                "units in duration \"{text}\" must each appear once, largest first, as in \"1h30m\""
            ));
        }
        last_unit = Some(index);
        total = number
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("duration \"{text}\" is too large"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_millis("500ms"), Ok(500));
        assert_eq!(parse_millis("30s"), Ok(30_000));
        assert_eq!(parse_millis("5m"), Ok(300_000));
        assert_eq!(parse_millis("1h"), Ok(3_600_000));
        assert_eq!(parse_millis("1m30s"), Ok(90_000));
        assert_eq!(parse_millis("2s500ms"), Ok(2_500));
        assert_eq!(parse_millis("1d"), Ok(86_400_000));
        assert_eq!(parse_millis("0s"), Ok(0));
    }

    #[test]
    fn rejects_malformed_input_with_a_reason() {
        for bad in [
            "",
            "30",
            "s",
            "30 s",
            "1.5s",
            "30sec",
            "-1s",
            "30s1m",
            "1s1s",
            "99999999999999999999s",
        ] {
            let err = parse_millis(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(parse_millis("30").unwrap_err().contains("missing unit"));
        assert!(parse_millis("30sec")
            .unwrap_err()
            .contains("unknown unit `sec`"));
        assert!(parse_millis("30s1m").unwrap_err().contains("largest first"));
    }
}
