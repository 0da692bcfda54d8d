//! Flag values only flags take: listen addresses ("0.0.0.0:8000"), refused
//! with a message that shows the forms they take. Sizes and durations, which
//! model.toml takes too, are parsed by `lifecycle::settings::values`.

use std::net::SocketAddr;

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
