//! `server.listen`: an IP address and port, or a host name and port (`localhost:3000`).

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Deserializer};

/// Reads `server.listen`, resolving a host name.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve(&text).map_err(serde::de::Error::custom)
}

/// `HOST:PORT` as one address to bind: an IP literal as it is, else the host's first IPv4
/// address (as `127.0.0.1` is the default), else its first address.
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = "expected HOST:PORT, such as `127.0.0.1:3000`, `[::1]:3000` or `localhost:3000`";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` has no port; {expected}"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` is not a port (0 to 65535); {expected}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{text}` has no host; {expected}"));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host `{host}`: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("host `{host}` resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_localhost() {
        assert_eq!(
            resolve("127.0.0.1:3000").expect("ip"),
            "127.0.0.1:3000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(resolve("[::1]:4000").expect("v6").port(), 4000);
        let local = resolve("localhost:3001").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 3001, "{local}");
    }

    #[test]
    fn bad_addresses_say_why() {
        assert!(resolve("nowhere").expect_err("no port").contains("no port"));
        assert!(
            resolve("localhost:http")
                .expect_err("port")
                .contains("not a port")
        );
        assert!(resolve(":3000").expect_err("host").contains("no host"));
    }
}
