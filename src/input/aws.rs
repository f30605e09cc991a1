//! The checks of what flowwatch hands to the AWS SDK: region names and endpoint URLs, from the
//! config or from the environment the SDK reads by itself. The SDK refuses a bad one only when
//! it builds a request, long after start-up; these checks refuse it at load, where the operator
//! can see which setting is wrong.

use std::ffi::OsString;

/// The longest endpoint or queue URL accepted (real ones are well under 200 characters).
pub const MAX_URL_LEN: usize = 2048;
/// The longest region name accepted: one DNS label.
const MAX_REGION_LEN: usize = 63;

/// The variables the SDK's default chain takes a region from, in its order: the first one set
/// wins, even when its value is empty.
pub const REGION_VARIABLES: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];

/// Why `region` is not a region name, if it is not. A region is one DNS label in lowercase
/// (`us-east-1`, `eu-central-2`, `us-gov-west-1`): the SDK puts it into the endpoint's host name
/// and into every signature, so a stray space or capital fails every call.
pub fn region_problem(region: &str) -> Option<String> {
    let valid = !region.is_empty()
        && region.len() <= MAX_REGION_LEN
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    (!valid).then(|| {
        format!(
            "{:?} is not an AWS region name: lowercase letters, digits and hyphens, like \"us-east-1\"",
            crate::model::bounded(region, 80)
        )
    })
}

/// The region variable the SDK would read, with its value, when one is set. A value that is not
/// Unicode is returned lossily, so it is refused rather than skipped (the SDK would skip it and
/// read the next variable, a surprise).
pub fn region_from_environment(
    var: impl Fn(&str) -> Option<OsString>,
) -> Option<(&'static str, String)> {
    REGION_VARIABLES
        .iter()
        .find_map(|name| var(name).map(|value| (*name, value.to_string_lossy().into_owned())))
}

/// Why `url` is not an http:// or https:// URL with a host, if it is not: parsed as the SDK's
/// HTTP stack parses it, so what passes here is what the SDK can send to.
pub fn http_url_problem(url: &str) -> Option<String> {
    if url.len() > MAX_URL_LEN {
        return Some(format!("is longer than {MAX_URL_LEN} characters"));
    }
    if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Some("contains white space or a control character".to_string());
    }
    let uri = match url.parse::<http::Uri>() {
        Ok(uri) => uri,
        Err(e) => return Some(format!("is not a URL ({e})")),
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Some("must start with http:// or https://".to_string());
    }
    match uri.host() {
        Some(host) if !host.is_empty() => None,
        _ => Some("names no host".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_one_lowercase_dns_label() {
        for good in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "cn-north-1",
            "eusc-de-east-1",
        ] {
            assert_eq!(region_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "us-east-1 ",
            "us-east-1\n",
            " us-east-1",
            "US-EAST-1",
            "us_east_1",
            "us.east.1",
            "-us-east-1",
            "us-east-",
            &"a".repeat(64),
        ] {
            assert!(region_problem(bad).is_some(), "{bad:?} passed");
        }
        let text = region_problem("us-east-1\n").expect("refused");
        assert!(
            text.starts_with("\"us-east-1\\n\" is not an AWS region name"),
            "{text}"
        );
    }

    #[test]
    fn the_region_variable_is_the_first_one_set_as_the_sdk_reads_them() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(region_from_environment(env(&[])), None);
        assert_eq!(
            region_from_environment(env(&[("AWS_DEFAULT_REGION", "eu-west-1")])),
            Some(("AWS_DEFAULT_REGION", "eu-west-1".to_string()))
        );
        assert_eq!(
            region_from_environment(env(&[
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("AWS_REGION", "")
            ])),
            Some(("AWS_REGION", String::new())),
            "an empty AWS_REGION still wins, as in the SDK"
        );
    }

    #[test]
    fn an_endpoint_must_parse_as_an_http_url_with_a_host() {
        for good in [
            "http://127.0.0.1:4566",
            "https://scn.us-east-1.amazonaws.com",
            "http://[::1]:8080/path",
            "http://user:secret@localhost:4566",
        ] {
            assert_eq!(http_url_problem(good), None, "{good}");
        }
        for bad in [
            "http://[::1",
            "localhost:4566",
            "ftp://example.com",
            "http://",
            "https://a b",
            "http://example.com/\u{0}",
        ] {
            assert!(http_url_problem(bad).is_some(), "{bad:?} passed");
        }
        assert!(http_url_problem(&format!("http://h/{}", "a".repeat(MAX_URL_LEN))).is_some());
    }
}
