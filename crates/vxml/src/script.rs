//! Finding the top-level declarations of a `<script>`.
//!
//! A script runs through `switchboard_ecma::Engine::eval_in_scope`, i.e. inside a function with
//! the scope chain as `with` objects, so its `var` and `function` declarations would stay local
//! to that function. VoiceXML wants them in the enclosing scope (dialog, document, ...). The
//! interpreter therefore declares the `var` names in the scope object before running (the
//! initializers then assign through the `with` chain) and copies the functions out after.

/// Top-level `var` names and `function` names of a script (outside any braces).
pub fn declarations(src: &str) -> (Vec<String>, Vec<String>) {
    let mut vars = Vec::new();
    let mut funcs = Vec::new();
    let toks = tokens(src);
    let mut depth = 0i32;
    let mut i = 0;
    while i < toks.len() {
        match toks[i].as_str() {
            "{" | "(" | "[" => depth += 1,
            "}" | ")" | "]" => depth -= 1,
            "var" if depth == 0 => i = var_names(&toks, i + 1, &mut vars),
            // after `=`, `(` or `,` it is a function expression, not a declaration
            "function" if depth == 0 && (i == 0 || [";", "}"].contains(&toks[i - 1].as_str())) => {
                if let Some(n) = toks.get(i + 1).filter(|t| is_ident(t)) {
                    funcs.push(n.clone());
                }
            }
            _ => {}
        }
        i += 1;
    }
    (vars, funcs)
}

/// Reads `a = ..., b, c = ...` after `var`; returns the index of the last token consumed.
fn var_names(toks: &[String], mut i: usize, out: &mut Vec<String>) -> usize {
    let mut depth = 0i32;
    let mut expect_name = true;
    while i < toks.len() {
        let t = toks[i].as_str();
        match t {
            "{" | "(" | "[" => depth += 1,
            "}" | ")" | "]" => {
                if depth == 0 {
                    return i - 1;
                }
                depth -= 1
            }
            ";" if depth == 0 => return i,
            "," if depth == 0 => {
                expect_name = true;
                i += 1;
                continue;
            }
            _ if expect_name && is_ident(t) => out.push(t.to_string()),
            _ => {}
        }
        expect_name = false;
        i += 1;
    }
    i
}

fn is_ident(t: &str) -> bool {
    let mut c = t.chars();
    matches!(c.next(), Some(ch) if ch.is_alphabetic() || ch == '_' || ch == '$')
        && t.chars()
            .all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '$')
}

/// Identifiers and punctuation, skipping strings and comments.
fn tokens(src: &str) -> Vec<String> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < c.len() && c[i] != ch {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            out.push("\"\"".into());
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' || ch == '$' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '$') {
                i += 1;
            }
            out.push(c[s..i].iter().collect());
        } else {
            if !ch.is_whitespace() {
                out.push(ch.to_string());
            }
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_top_level_declarations() {
        let (v, f) = declarations(
            "var a = 1, b = f(2, 3), c; function g(x) { var inner = '}'; } /* var no */ var d=[1,2]; x = function h() {};",
        );
        assert_eq!(v, vec!["a", "b", "c", "d"]);
        assert_eq!(f, vec!["g"]);
    }
}
