//! Sizes ("256MiB") and durations ("30s") as people write them, in
//! model.toml, the repository API's config and the flags alike, each refused
//! with a message that shows the forms it takes. They live with the settings
//! because a model's limits are written in them; the flags borrow them.

use std::time::Duration;

/// Parses "256MiB", "1GiB", "512KB", "64M", Kubernetes' "128Mi" or a plain
/// number of bytes. Every unit is binary (K = 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write e.g. 64MiB, 1GiB or 1048576"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kb" | "kib" => 1 << 10,
        "m" | "mi" | "mb" | "mib" => 1 << 20,
        "g" | "gi" | "gb" | "gib" => 1 << 30,
        "t" | "ti" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown size unit in {text:?}; use KiB, MiB, GiB or TiB (or Ki, Mi, Gi, Ti)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses "500ms", "30s", "2m" or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 500ms, 30s or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        _ => return Err(format!("unknown duration unit in {text:?}; use ms, s or m")),
    };
    if seconds <= 0.0 {
        return Err(format!("{text:?} must be more than zero"));
    }
    if seconds.is_nan() || seconds > LONGEST_DURATION.as_secs_f64() {
        return Err(format!(
            "{text:?} is longer than the {} days wasm-host accepts for any duration",
            LONGEST_DURATION.as_secs() / 86_400
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The longest duration any flag or setting takes: a week is longer than
/// any sensible timeout, and a clock plus it can never overflow (a timeout
/// of 1e20 s once panicked the host computing a deadline).
pub const LONGEST_DURATION: Duration = Duration::from_secs(7 * 86_400);

/// Parses `--max-queue-delay`: a number of microseconds (as Triton's
/// `max_queue_delay_microseconds`), or a duration with a unit (500us, 2ms);
/// 0 is allowed: batch only what is already waiting.
pub fn parse_queue_delay(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(micros) = text.parse::<u64>() {
        return Ok(Duration::from_micros(micros));
    }
    let micros = text.strip_suffix("us").or_else(|| text.strip_suffix("µs"));
    match micros.map(|n| n.trim().parse::<u64>()) {
        Some(Ok(n)) => Ok(Duration::from_micros(n)),
        Some(Err(_)) => Err(format!(
            "{text:?} is not a delay; write microseconds (500), or 500us, 2ms"
        )),
        None => parse_duration(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_as_written_in_the_help() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_size("128Mi"), Ok(128 << 20));
        assert_eq!(parse_size("512Ki"), Ok(512 << 10));
        assert_eq!(parse_size("2Gi"), Ok(2 << 30));
        assert_eq!(parse_size("1Ti"), Ok(1 << 40));
        assert_eq!(parse_duration("7 m"), Ok(Duration::from_secs(420)));
        for huge in [
            "1e20",
            "100000000000000000000",
            "604801",
            "1e19s",
            "inf",
            "NaN",
        ] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        assert_eq!(parse_duration("604800"), Ok(LONGEST_DURATION));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
