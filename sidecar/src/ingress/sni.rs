//! Reading the server name from a TLS ClientHello without terminating TLS: the ingress
//! routes by it and passes every byte on unchanged (RFC 8446 §4.1.2, RFC 6066 §3).

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Sni {
    /// The ClientHello is not complete yet: read more.
    NeedMore,
    /// The server name the client asked for.
    Name(String),
    /// Not a TLS ClientHello, or one without a host name.
    Invalid(&'static str),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| (usize::from(b[0]) << 8) | usize::from(b[1]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// Largest ClientHello accepted (one handshake message over a few records).
pub const MAX_HELLO: usize = 16 * 1024;

/// Parses the server name out of the first bytes of a TLS connection.
pub fn parse(data: &[u8]) -> Sni {
    // Reassemble the handshake bytes from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut rest = data;
    while rest.len() >= 5 {
        if rest[0] != 22 {
            return Sni::Invalid("not a TLS handshake record");
        }
        let len = (usize::from(rest[3]) << 8) | usize::from(rest[4]);
        if rest.len() < 5 + len {
            break;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    if data.first().is_some_and(|b| *b != 22) {
        return Sni::Invalid("not a TLS handshake record");
    }
    let mut r = Reader { buf: &handshake };
    let (Some(kind), Some(len)) = (r.u8(), r.u24()) else {
        return need_more(data);
    };
    if kind != 1 {
        return Sni::Invalid("first handshake message is not a ClientHello");
    }
    if len > MAX_HELLO {
        return Sni::Invalid("ClientHello too large");
    }
    let Some(body) = r.take(len) else {
        return need_more(data);
    };
    let mut r = Reader { buf: body };
    let hello = (|| {
        r.take(2 + 32)?; // version, random
        let sid = r.u8()?;
        r.take(sid)?;
        let suites = r.u16()?;
        r.take(suites)?;
        let comp = r.u8()?;
        r.take(comp)?;
        let ext_len = r.u16()?;
        let mut exts = Reader {
            buf: r.take(ext_len)?,
        };
        while let (Some(ty), Some(l)) = (exts.u16(), exts.u16()) {
            let ext = exts.take(l)?;
            if ty != 0 {
                continue;
            }
            let mut names = Reader { buf: ext };
            let list = names.u16()?;
            let mut list = Reader {
                buf: names.take(list)?,
            };
            while let (Some(name_type), Some(n)) = (list.u8(), list.u16()) {
                let name = list.take(n)?;
                if name_type == 0 {
                    return Some(Some(String::from_utf8_lossy(name).to_ascii_lowercase()));
                }
            }
        }
        Some(None)
    })();
    match hello {
        Some(Some(name)) => Sni::Name(name),
        Some(None) => Sni::Invalid("the ClientHello names no server"),
        None => Sni::Invalid("malformed ClientHello"),
    }
}

fn need_more(data: &[u8]) -> Sni {
    if data.len() > MAX_HELLO + 5 * 4 {
        Sni::Invalid("ClientHello too large")
    } else {
        Sni::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn client_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_name_in_a_real_client_hello() {
        let hello = client_hello("abcdef0123456789.web.weft");
        assert_eq!(parse(&hello), Sni::Name("abcdef0123456789.web.weft".into()));
        // Any prefix is "need more", never a wrong answer.
        for cut in [0, 3, 5, 20, hello.len() - 1] {
            assert_eq!(parse(&hello[..cut]), Sni::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn refuses_what_is_not_tls() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Sni::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Sni::Invalid(_)
        ));
    }
}
