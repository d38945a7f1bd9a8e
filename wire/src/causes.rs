//! An error's message with its causes, for messages people read: many
//! libraries keep the reason in `source()` and say only "error sending
//! request" or "error connecting to server" themselves.

/// `e`'s message, then each cause's, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_named_in_order() {
        let e = Outer(std::io::Error::other("refused"));
        assert_eq!(error_chain(&e), "outer: refused");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }
}
