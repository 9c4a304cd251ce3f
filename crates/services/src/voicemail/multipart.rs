//! `multipart/form-data` (RFC 7578) bodies as the media server's `<submit>` posts them: the
//! recording is one part with a file name. A small parser: the boundary from the media type,
//! parts split on it, each part's `Content-Disposition` name and file name.

/// One part of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub data: &'a [u8],
}

/// Why a body is not a form we can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadForm(pub &'static str);

/// The boundary of a `multipart/form-data` media type.
pub fn boundary(content_type: &str) -> Result<String, BadForm> {
    let mut params = content_type.split(';');
    let kind = params.next().unwrap_or("").trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return Err(BadForm("not multipart/form-data"));
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or(BadForm("no boundary"))
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The parts of `body`.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, BadForm> {
    let delim = format!("--{boundary}");
    let between = format!("\r\n--{boundary}");
    let mut at = find(body, delim.as_bytes(), 0).ok_or(BadForm("no boundary in the body"))?;
    let mut parts = Vec::new();
    loop {
        let after = at + delim.len();
        let rest = body.get(after..).ok_or(BadForm("truncated"))?;
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let head_start = after + 2;
        if !rest.starts_with(b"\r\n") {
            return Err(BadForm("no line break after a boundary"));
        }
        let head_end =
            find(body, b"\r\n\r\n", head_start).ok_or(BadForm("part without headers"))?;
        let data_start = head_end + 4;
        let end = find(body, between.as_bytes(), data_start).ok_or(BadForm("unterminated part"))?;
        let head = std::str::from_utf8(&body[head_start..head_end])
            .map_err(|_| BadForm("part headers are not UTF-8"))?;
        let (name, filename) = disposition(head).ok_or(BadForm("part without a name"))?;
        parts.push(Part {
            name,
            filename,
            data: &body[data_start..end],
        });
        at = end + 2;
    }
}

/// `name` and `filename` of a part's `Content-Disposition: form-data; ...` header.
fn disposition(head: &str) -> Option<(String, Option<String>)> {
    let line = head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-disposition")
            .then_some(v)
    })?;
    let mut name = None;
    let mut filename = None;
    for p in line.split(';').skip(1) {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(v),
            "filename" => filename = Some(v),
            _ => {}
        }
    }
    Some((name?, filename))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=switchboard-vxml-submit";

    fn body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"--switchboard-vxml-submit\r\nContent-Disposition: form-data; name=\"msg\"; filename=\"vxml-1.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--x\x00\xff");
        b.extend_from_slice(b"\r\n--switchboard-vxml-submit\r\nContent-Disposition: form-data; name=\"who\"\r\n\r\nann\r\n--switchboard-vxml-submit--\r\n");
        b
    }

    #[test]
    fn parses_the_media_servers_form() {
        let b = body();
        let parts = parse(&b, &boundary(CT).unwrap()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "msg");
        assert_eq!(parts[0].filename.as_deref(), Some("vxml-1.wav"));
        assert_eq!(parts[0].data, b"RIFF\r\n--x\x00\xff");
        assert_eq!(
            (parts[1].name.as_str(), parts[1].data),
            ("who", &b"ann"[..])
        );
    }

    #[test]
    fn bad_forms_are_errors_not_panics() {
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").is_err());
        assert_eq!(
            boundary("multipart/form-data; boundary=\"a b\"").unwrap(),
            "a b"
        );
        let b = body();
        for cut in 0..b.len() {
            let _ = parse(&b[..cut], "switchboard-vxml-submit");
        }
        assert!(parse(b"--b\r\nno headers end", "b").is_err());
        assert!(parse(b"--b\r\n\r\nx\r\n--b--", "b").is_err(), "no name");
        assert!(parse(b"garbage", "b").is_err());
    }
}
