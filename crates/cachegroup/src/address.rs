//! Names and addresses of a group: which group names are valid, and where
//! a member listens and is reached (`--group-listen`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// A group name or listen address that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("invalid cache group name {0:?}: use 1 to 63 letters, digits, '-', '_' or '.'")]
    GroupName(String),
    #[error("invalid listen address {0:?}: use IP:PORT (e.g. 10.0.0.5:9800), IP, :PORT or auto")]
    Listen(String),
}

/// A group name: letters, digits, `-`, `_`, `.`; 1 to 63 characters.
pub fn check_group_name(name: &str) -> Result<(), AddressError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(AddressError::GroupName(name.to_string()))
    }
}

/// This host's address as others see it: the source address of a route
/// out (no packet is sent), else loopback.
pub fn host_ip() -> IpAddr {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.254.254.254:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Where to listen, from `auto`, `ip`, `ip:port` or `:port` (port 0 picks
/// one).
pub fn listen_addr(spec: &str) -> Result<SocketAddr, AddressError> {
    let spec = spec.trim();
    if spec == "auto" {
        return Ok(SocketAddr::new(host_ip(), 0));
    }
    if let Ok(a) = spec.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 0));
    }
    if let Some(port) = spec.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::new(host_ip(), port));
    }
    Err(AddressError::Listen(spec.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_and_group_names() {
        assert_eq!(
            listen_addr("127.0.0.2:9800").expect("ip:port"),
            "127.0.0.2:9800".parse().expect("addr")
        );
        assert_eq!(listen_addr("127.0.0.3").expect("ip").port(), 0);
        assert_eq!(listen_addr(":9801").expect(":port").port(), 9801);
        assert!(listen_addr("auto").is_ok());
        assert!(listen_addr("nonsense:port")
            .expect_err("bad")
            .to_string()
            .contains("invalid listen address"));
        assert!(check_group_name("gpu-a100.rack_1").is_ok());
        for bad in ["", "a b", "x/y", &"g".repeat(64)] {
            assert!(check_group_name(bad).is_err(), "{bad:?}");
        }
    }
}
