//! The identity a TLS peer is authorized by: an X.509 distinguished name
//! written as GnuTLS writes it (RFC 4514: the last attribute first,
//! `CN=client,O=Example,C=GB`), which is what QEMU's `tls-authz` rules
//! match.

use openssl::nid::Nid;
use openssl::x509::X509NameRef;

/// `name` in RFC 4514 form, as `gnutls_x509_crt_get_dn` gives it.
pub fn distinguished_name(name: &X509NameRef) -> String {
    let entries: Vec<String> = name
        .entries()
        .map(|entry| {
            let nid = entry.object().nid();
            let key = match nid {
                Nid::PKCS9_EMAILADDRESS => "EMAIL".to_owned(),
                Nid::UNDEF => entry.object().to_string(),
                nid => nid
                    .short_name()
                    .map_or_else(|_| entry.object().to_string(), str::to_owned),
            };
            let value = entry
                .data()
                .to_string()
                .map(|text| escape(&text))
                .unwrap_or_default();
            format!("{key}={value}")
        })
        .collect();
    entries.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 4514 escaping of an attribute value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::X509Name;

    #[test]
    fn names_are_written_last_attribute_first_and_escaped() {
        let mut name = X509Name::builder().unwrap();
        name.append_entry_by_text("C", "GB").unwrap();
        name.append_entry_by_text("O", "Acme, Inc").unwrap();
        name.append_entry_by_text("CN", " client").unwrap();
        name.append_entry_by_nid(Nid::PKCS9_EMAILADDRESS, "a@b.c")
            .unwrap();
        let name = name.build();
        assert_eq!(
            distinguished_name(&name),
            "EMAIL=a@b.c,CN=\\ client,O=Acme\\, Inc,C=GB"
        );
    }
}
