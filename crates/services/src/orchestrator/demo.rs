//! The built-in documents: `builtin:demo-strategy` (route point 5000 of the demo
//! configuration) and the VoiceXML menu it plays, served by the role at
//! `/orchestrator/builtin/{name}` so that the media server can fetch it.

/// The demo strategy (SCXML).
pub const DEMO_STRATEGY: &str = include_str!("demo/demo-strategy.scxml");
/// The demo's main menu (VoiceXML), exiting with `choice` = `sales` or `support`.
pub const DEMO_MENU: &str = include_str!("demo/menu.vxml");

/// A built-in document by name: its text and content type. `demo-strategy` is also known as
/// `demo-strategy.scxml`.
pub fn builtin(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "demo-strategy" | "demo-strategy.scxml" => Some((DEMO_STRATEGY, "application/scxml+xml")),
        "menu.vxml" => Some((DEMO_MENU, "application/voicexml+xml")),
        _ => None,
    }
}
