//! Durations written as strings: "500ms", "30s", "5m", "1h", "1m30s".

/// Parses a duration into milliseconds. Units: `ms`, `s`, `m`, `h`, `d`, each at most once, in
/// decreasing order, each with a number, which may have a fraction when it comes to whole
/// milliseconds: "1h30m", "2s500ms", "1.5s", "0.25h". Spaces between parts are allowed.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let hint =
        "write it as a number with a unit: \"500ms\", \"30s\", \"1.5s\", \"5m\", \"1h\", \"1m30s\"";
    if text.trim().is_empty() {
        return Err(format!("empty duration; {hint}"));
    }
    let mut rest = text.trim_start();
    let mut total: u64 = 0;
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let whole = rest.bytes().take_while(u8::is_ascii_digit).count();
        if whole == 0 {
            return Err(format!("invalid duration \"{text}\"; {hint}"));
        }
        let number_start = rest;
        let (int_part, after) = rest.split_at(whole);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                if n == 0 {
                    return Err(format!(
                        "invalid duration \"{text}\": a `.` needs digits after it; {hint}"
                    ));
                }
                f.split_at(n)
            }
            None => ("", after),
        };
        let number = &number_start[..number_start.len() - after.len()];
        rest = after.trim_start();
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                format!("missing unit after `{int_part}` in duration \"{text}\"; {hint}")
            } else {
                let short = match unit.to_ascii_lowercase().as_str() {
                    "msec" | "msecs" | "millis" | "millisecond" | "milliseconds" => Some("ms"),
                    "sec" | "secs" | "second" | "seconds" => Some("s"),
                    "min" | "mins" | "minute" | "minutes" => Some("m"),
                    "hr" | "hrs" | "hour" | "hours" => Some("h"),
                    "day" | "days" => Some("d"),
                    _ => None,
                };
                match short {
                    Some(short) => format!(
                        "unknown unit `{unit}` in duration \"{text}\"; write `{short}`, as in \"{number}{short}\""
                    ),
                    None => format!(
                        "unknown unit `{unit}` in duration \"{text}\"; units are `ms`, `s`, `m`, `h`, `d`"
                    ),
                }
            });
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(format!(
                "units in duration \"{text}\" must each appear once, largest first, as in \"1h30m\""
            ));
        }
        last_unit = Some(index);
        let unit_ms = UNITS[index].1;
        let too_large = || format!("duration \"{text}\" is too large");
        let mut ms = int_part
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_ms))
            .ok_or_else(too_large)?;
        // Trailing zeros say nothing ("1.50s" is "1.5s").
        let frac_part = frac_part.trim_end_matches('0');
        if !frac_part.is_empty() {
            // The fraction, exactly: digits / 10^len of the unit, in whole milliseconds only.
            let not_whole = || {
                format!(
                    "duration \"{text}\" is not a whole number of milliseconds; leases are kept in milliseconds"
                )
            };
            // A unit is at most a day, 8.64e7 ms: past 8 digits a fraction cannot come to
            // whole milliseconds.
            if frac_part.len() > 8 {
                return Err(not_whole());
            }
            let digits: u128 = frac_part.parse().map_err(|_| too_large())?;
            let scale = 10u128.pow(frac_part.len() as u32);
            let scaled = digits * u128::from(unit_ms);
            if !scaled.is_multiple_of(scale) {
                return Err(not_whole());
            }
            ms = u64::try_from(scaled / scale)
                .ok()
                .and_then(|f| ms.checked_add(f))
                .ok_or_else(too_large)?;
        }
        total = total.checked_add(ms).ok_or_else(too_large)?;
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
        // Fractions that come to whole milliseconds, and spaces.
        assert_eq!(parse_millis("1.5s"), Ok(1_500));
        assert_eq!(parse_millis("0.25h"), Ok(900_000));
        assert_eq!(parse_millis("30 s"), Ok(30_000));
        assert_eq!(parse_millis("1m 30s"), Ok(90_000));
    }

    #[test]
    fn rejects_malformed_input_with_a_reason() {
        for bad in [
            "",
            "30",
            "s",
            "1.5ms",
            "1.0005s",
            "1.s",
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
        // The real reason, and the fix.
        assert!(parse_millis("30 sec")
            .unwrap_err()
            .contains("write `s`, as in \"30s\""));
        assert!(parse_millis("1.0005s")
            .unwrap_err()
            .contains("not a whole number of milliseconds"));
        assert!(parse_millis("30s1m").unwrap_err().contains("largest first"));
    }
}
