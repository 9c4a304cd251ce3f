//! Fetch attributes and properties (VoiceXML 2.0 §6.1, §6.3.5): `fetchtimeout`, `maxage`,
//! `maxstale` and `fetchaudio` of the element causing a fetch, else the properties in
//! effect, turned into the [`FetchOptions`] of a [`crate::Command::Fetch`].

use crate::dom::{self, Elem};
use crate::interp::{parse_time, Interpreter};
use crate::{FetchAudio, FetchOptions};

/// Default `fetchaudiodelay`: fetches shorter than this play no fetchaudio.
pub(crate) const FETCH_AUDIO_DELAY_MS: u64 = 2_000;
/// Default `fetchaudiominimum`: once started, fetchaudio plays at least this long.
pub(crate) const FETCH_AUDIO_MINIMUM_MS: u64 = 5_000;

/// What is fetched: names its `maxage`/`maxstale` properties; fetchaudio plays for
/// documents and `<data>` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Document,
    Script,
    Data,
    Grammar,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Document => "document",
            Kind::Script => "script",
            Kind::Data => "data",
            Kind::Grammar => "grammar",
        }
    }

    /// The kind of a resource element fetched ahead.
    pub(crate) fn of(e: &Elem) -> Kind {
        match e.name.as_str() {
            "script" => Kind::Script,
            "data" => Kind::Data,
            "grammar" => Kind::Grammar,
            _ => Kind::Document,
        }
    }
}

/// Where properties are looked up.
pub(crate) enum Props<'a> {
    /// From the current form item outwards (a fetch started by running content).
    Current,
    /// In a document being loaded (its root element and URL, for its scripts, grammars and
    /// data), then the application root.
    Loading(&'a Elem, &'a str),
}

impl Interpreter {
    /// The options of a fetch of `kind` caused by `e` (its attributes win over properties).
    pub(crate) fn fetch_options(&self, e: Option<&Elem>, kind: Kind, props: Props) -> FetchOptions {
        let prop = |name: &str| -> Option<String> {
            match &props {
                Props::Current => {
                    let item = self
                        .form
                        .as_ref()
                        .and_then(|f| f.current.and_then(|i| f.items.get(i)))
                        .map(|it| it.elem.clone());
                    self.prop(item.as_deref(), name)
                }
                Props::Loading(doc, _) => [Some(*doc), self.app_root.as_deref()]
                    .into_iter()
                    .flatten()
                    .find_map(|l| {
                        l.children("property")
                            .filter(|p| p.attr("name") == Some(name))
                            .filter_map(|p| p.attr("value"))
                            .last()
                            .map(str::to_string)
                    }),
            }
        };
        let attr = |name: &str| e.and_then(|e| e.attr(name)).map(str::to_string);
        let p = kind.prefix();
        let timeout_ms = attr("fetchtimeout")
            .or_else(|| prop("fetchtimeout"))
            .and_then(|t| parse_time(&t));
        let seconds = |v: Option<String>| v.and_then(|v| v.trim().parse::<u64>().ok());
        let maxage_s = seconds(attr("maxage").or_else(|| prop(&format!("{p}maxage"))));
        let maxstale_s = seconds(attr("maxstale").or_else(|| prop(&format!("{p}maxstale"))));
        let fetch_audio = match kind {
            Kind::Document | Kind::Data => {
                // An empty attribute turns the property's audio off for this fetch.
                let base = match &props {
                    Props::Loading(_, url) => url,
                    Props::Current => self.doc_url.as_str(),
                };
                let url = match attr("fetchaudio") {
                    Some(a) => Some(a),
                    None => prop("fetchaudio"),
                };
                url.map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty())
                    .map(|u| FetchAudio {
                        url: dom::resolve(base, &u),
                        delay_ms: prop("fetchaudiodelay")
                            .and_then(|t| parse_time(&t))
                            .unwrap_or(FETCH_AUDIO_DELAY_MS),
                        minimum_ms: prop("fetchaudiominimum")
                            .and_then(|t| parse_time(&t))
                            .unwrap_or(FETCH_AUDIO_MINIMUM_MS),
                    })
            }
            Kind::Script | Kind::Grammar => None,
        };
        FetchOptions {
            timeout_ms,
            maxage_s,
            maxstale_s,
            fetch_audio,
            multipart: false,
        }
    }
}
