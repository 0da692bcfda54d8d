//! Flag values people type: sizes ("256MiB"), durations ("30s"), addresses
//! ("0.0.0.0:8000"), each refused with a message that shows the forms it
//! takes.

use std::net::SocketAddr;
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

/// Parses a listen address: IP:PORT, HOST:PORT (the name resolved now, at
/// start; its IPv4 address if it has one), or :PORT for every interface, as
/// gunicorn and Go read it.
pub fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    use std::net::{Ipv4Addr, ToSocketAddrs};
    let forms = "write IP:PORT (127.0.0.1:8000, [::1]:8000), HOST:PORT (localhost:8000) \
                 or :PORT (every interface, e.g. :8000)";
    let text = text.trim();
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?} has no valid port; {forms}"))?;
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} has no port; {forms}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{text:?} is not an address; {forms}"));
    }
    let resolved: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {host:?} ({err}); {forms}"))?
        .collect();
    // One address is bound: IPv4 when the name has one (localhost is
    // 127.0.0.1 to most clients), else the first.
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{host:?} resolves to no address; {forms}"))
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
