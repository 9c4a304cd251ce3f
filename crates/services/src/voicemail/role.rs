//! Async glue of the `voicemail` role: the HTTP routes the media server fetches the menus
//! from (VoiceXML documents built by [`super::docs`] from the decisions of [`super::menu`]),
//! the durable deposit (audio file, then the store row, then the answer), the REST API of
//! messages, the retention sweep, and message-waiting changes handed to [`super::mwi`].

use super::docs::{self, url, Deposit, Play, VXML_TYPE};
use super::menu::{self, Effect, MessageKey, Nav, PinOutcome, Session};
use super::multipart;
use super::mwi::Mwi;
use crate::bus::publish_event;
use crate::dialplan::role::DialplanCell;
use crate::problem::ApiProblem;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchboard_bus::SharedBus;
use switchboard_config::Mailbox;
use switchboard_events::{ConnId, Event, MessageAttrs, UserData};
use switchboard_store::{
    Counts, Heard, MessageState, NewMessage, SharedStore, StoreError, StoredMessage,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Access sessions end this long after the login.
const SESSION_TTL_MS: u64 = 2 * 3600 * 1000;
/// The largest recording posted: the longest message (3600 s) as 8 kHz 16-bit WAV, with room
/// for the form around it (axum's default limit of 2 MB would refuse messages over a minute).
const MAX_UPLOAD_BYTES: usize = 3600 * 8000 * 2 + (1 << 20);
/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// A started voicemail role.
pub struct VoicemailRunning {
    pub router: Router,
    pub task: JoinHandle<anyhow::Result<()>>,
}

struct Vm {
    store: SharedStore,
    bus: Option<SharedBus>,
    plan: Arc<DialplanCell>,
    dir: PathBuf,
    sessions: Mutex<HashMap<String, Session>>,
    mwi: Option<Mwi>,
}

type Shared = Arc<Vm>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts the role: routes, and the retention sweep until `drain`.
pub fn start(
    dir: PathBuf,
    store: SharedStore,
    bus: Option<SharedBus>,
    plan: Arc<DialplanCell>,
    mwi: Option<Mwi>,
    drain: CancellationToken,
) -> VoicemailRunning {
    if let Some(m) = &mwi {
        m.prime();
    }
    let vm = Arc::new(Vm {
        store,
        bus,
        plan,
        dir,
        sessions: Mutex::new(HashMap::new()),
        mwi,
    });
    let task = tokio::spawn(sweep_until(vm.clone(), drain));
    VoicemailRunning {
        router: routes(vm),
        task,
    }
}

fn routes(vm: Shared) -> Router {
    let s = "/voicemail/v1/sessions/{token}";
    Router::new()
        .route(
            "/voicemail/v1/tenants/{tenant}/deposit/{mailbox}",
            get(deposit_doc),
        )
        .route(
            "/voicemail/v1/tenants/{tenant}/deposit/{mailbox}/message",
            post(deposit_message).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route(
            "/voicemail/v1/tenants/{tenant}/greeting/{file}",
            get(greeting_audio),
        )
        .route("/voicemail/v1/tenants/{tenant}/access", get(access_doc))
        .route("/voicemail/v1/tenants/{tenant}/access/login", get(login))
        .route(&format!("{s}/menu"), get(menu_doc))
        .route(&format!("{s}/play"), get(play_doc))
        .route(&format!("{s}/key"), get(key_doc))
        .route(&format!("{s}/audio/{{file}}"), get(session_audio))
        .route(
            &format!("{s}/greeting"),
            get(greeting_doc).post(greeting_upload.layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))),
        )
        .route(&format!("{s}/bye"), get(bye_doc))
        .route(
            "/v1/tenants/{tenant}/mailboxes/{key}/messages",
            get(api_list),
        )
        .route(
            "/v1/tenants/{tenant}/mailboxes/{key}/messages/{id}",
            delete(api_delete),
        )
        .route(
            "/v1/tenants/{tenant}/mailboxes/{key}/messages/{id}/audio",
            get(api_audio),
        )
        .route(
            "/v1/tenants/{tenant}/mailboxes/{key}/messages/{id}/read",
            post(api_read),
        )
        .with_state(vm)
}

// ---- helpers ----

fn vxml(doc: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, VXML_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        doc,
    )
        .into_response()
}

fn wav(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "audio/wav"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

fn problem(p: ApiProblem) -> Response {
    metrics::counter!("voicemail_api_rejected_total", "status" => p.status.to_string())
        .increment(1);
    p.into_response()
}

fn db_problem(e: impl std::fmt::Display) -> ApiProblem {
    tracing::warn!(error = %e, "voicemail store");
    ApiProblem::new(503, "Store unavailable", e.to_string())
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiProblem> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(db_problem(e)),
        Err(e) => Err(db_problem(e)),
    }
}

/// Message ids are ours: lower-case hex and `-` (file names and URLs without escaping).
fn is_message_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-'))
}

fn new_message_id(now: u64) -> String {
    format!("{now:x}-{:016x}", rand::random::<u64>())
}

impl Vm {
    fn mailbox(&self, tenant: &str, number: &str) -> Option<Mailbox> {
        self.plan.current().mailbox(tenant, number).cloned()
    }

    /// `dir/tenant/mailbox`: both names were checked against the plan (letters, digits,
    /// `_`, `-`), so they are safe path components.
    fn box_dir(&self, tenant: &str, mailbox: &str) -> PathBuf {
        self.dir.join(tenant).join(mailbox)
    }

    fn greeting_path(&self, tenant: &str, mailbox: &str) -> PathBuf {
        self.box_dir(tenant, mailbox).join("greeting.wav")
    }

    fn session(&self, token: &str) -> Option<Session> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(token)
            .filter(|s| now_ms().saturating_sub(s.started_ms) < SESSION_TTL_MS)
            .cloned()
    }

    fn put_session(&self, token: &str, session: Session) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        sessions.retain(|_, s| now.saturating_sub(s.started_ms) < SESSION_TTL_MS);
        sessions.insert(token.to_owned(), session);
    }

    async fn counts(self: &Arc<Self>, tenant: &str, mailbox: &str) -> Result<Counts, ApiProblem> {
        let (store, t, m) = (self.store.clone(), tenant.to_owned(), mailbox.to_owned());
        blocking(move || store.message_counts(&t, &m)).await
    }

    /// Tells the owner's phones (message waiting) what the mailbox holds now.
    fn changed(&self, tenant: &str, mailbox: &str) {
        if let Some(mwi) = &self.mwi {
            mwi.changed(tenant, mailbox);
        }
    }
}

/// Writes `bytes` to `path` so that it survives a crash once this returns: a temporary file,
/// fsync, rename, fsync of the directory.
async fn write_durably(path: PathBuf, bytes: Vec<u8>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let dir = path.parent().unwrap_or(FsPath::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("wav.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The WAV part of a form posted by the media server, with its duration in ms.
fn wav_part(headers: &HeaderMap, body: &[u8], name: &str) -> Result<(Vec<u8>, u64), ApiProblem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary =
        multipart::boundary(ct).map_err(|e| ApiProblem::bad_request(e.0).field("content-type"))?;
    let parts = multipart::parse(body, &boundary).map_err(|e| ApiProblem::bad_request(e.0))?;
    let part = parts
        .iter()
        .find(|p| p.name == name && p.filename.is_some())
        .ok_or_else(|| {
            ApiProblem::bad_request(format!("no recording in part {name:?}")).field(name)
        })?;
    let audio = switchboard_media::Audio::from_wav(part.data)
        .map_err(|e| ApiProblem::bad_request(format!("not a WAV file: {e}")).field(name))?;
    let ms = audio.len() as u64 * 1000 / u64::from(switchboard_media::RATE);
    Ok((part.data.to_vec(), ms))
}

// ---- deposit ----

#[derive(Deserialize)]
struct DepositQuery {
    caller: Option<String>,
    conn: Option<String>,
    /// The call's attached data, as JSON.
    ud: Option<String>,
}

impl DepositQuery {
    fn echo(&self) -> Vec<(&str, &str)> {
        let mut q = Vec::new();
        for (k, v) in [
            ("caller", &self.caller),
            ("conn", &self.conn),
            ("ud", &self.ud),
        ] {
            if let Some(v) = v {
                q.push((k, v.as_str()));
            }
        }
        q
    }

    fn conn_id(&self) -> Option<ConnId> {
        self.conn.as_deref()?.parse().ok()
    }

    fn user_data(&self) -> UserData {
        self.ud
            .as_deref()
            .and_then(|u| serde_json::from_str(u).ok())
            .unwrap_or_default()
    }
}

const FULL: &str = "Sorry, this mailbox is full and cannot take messages. Goodbye.";

async fn deposit_doc(
    State(vm): State<Shared>,
    Path((tenant, number)): Path<(String, String)>,
    Query(q): Query<DepositQuery>,
) -> Response {
    let Some(mailbox) = vm.mailbox(&tenant, &number) else {
        return vxml(docs::goodbye("This mailbox does not exist. Goodbye."));
    };
    let counts = match vm.counts(&tenant, &number).await {
        Ok(c) => c,
        Err(p) => return problem(p),
    };
    if !menu::takes_message(counts, mailbox.max_messages) {
        tracing::info!(tenant, mailbox = number, "mailbox full: no deposit");
        metrics::counter!("voicemail_deposits_refused_total", "reason" => "full").increment(1);
        return vxml(docs::goodbye(FULL));
    }
    let greeting_file = vm.greeting_path(&tenant, &number);
    let version = tokio::fs::metadata(&greeting_file)
        .await
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis().to_string());
    // The version in the URL: the media server caches prompts by URL.
    let greeting = version.map(|v| {
        url(
            &format!("/voicemail/v1/tenants/{tenant}/greeting/{number}.wav"),
            &[("v", &v)],
        )
    });
    let submit = url(
        &format!("/voicemail/v1/tenants/{tenant}/deposit/{number}/message"),
        &q.echo(),
    );
    vxml(docs::deposit(&Deposit {
        mailbox: &number,
        greeting: greeting.as_deref(),
        max_message_s: mailbox.max_message_s,
        submit: &submit,
    }))
}

async fn deposit_message(
    State(vm): State<Shared>,
    Path((tenant, number)): Path<(String, String)>,
    Query(q): Query<DepositQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(mailbox) = vm.mailbox(&tenant, &number) else {
        return problem(ApiProblem::not_found(format!(
            "no mailbox {number:?} in tenant {tenant:?}"
        )));
    };
    let (audio, duration_ms) = match wav_part(&headers, &body, "msg") {
        Ok(a) => a,
        Err(p) => return problem(p),
    };
    match store_message(&vm, &tenant, &mailbox, &q, audio, duration_ms).await {
        Ok(true) => vxml(docs::goodbye("Your message has been saved. Goodbye.")),
        Ok(false) => vxml(docs::goodbye(FULL)),
        Err(p) => problem(p),
    }
}

/// The deposit: the audio durably in its file, then the row; `false` when the mailbox
/// filled up meanwhile (the file is removed again). The event and the message-waiting
/// update follow the commit.
async fn store_message(
    vm: &Shared,
    tenant: &str,
    mailbox: &Mailbox,
    q: &DepositQuery,
    audio: Vec<u8>,
    duration_ms: u64,
) -> Result<bool, ApiProblem> {
    let now = now_ms();
    let id = new_message_id(now);
    let file = format!("{tenant}/{}/{id}.wav", mailbox.number);
    let path = vm.dir.join(&file);
    write_durably(path.clone(), audio)
        .await
        .map_err(|e| db_problem(format!("cannot write {}: {e}", path.display())))?;
    let msg = NewMessage {
        tenant: tenant.to_owned(),
        mailbox: mailbox.number.clone(),
        id: id.clone(),
        caller: q.caller.clone().filter(|c| !c.is_empty()),
        conn_id: q.conn_id().map(|c| c.to_string()),
        received_ms: now,
        duration_ms,
        file,
        user_data: q.user_data(),
    };
    let (store, m, max) = (vm.store.clone(), msg.clone(), mailbox.max_messages);
    let counts = match tokio::task::spawn_blocking(move || store.deposit_message(&m, max)).await {
        Ok(Ok(c)) => c,
        Ok(Err(StoreError::Conflict { field, .. })) if field == "mailbox" => {
            let _ = tokio::fs::remove_file(&path).await;
            metrics::counter!("voicemail_deposits_refused_total", "reason" => "full").increment(1);
            return Ok(false);
        }
        Ok(Err(e)) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(db_problem(e));
        }
        Err(e) => return Err(db_problem(e)),
    };
    tracing::info!(tenant, mailbox = mailbox.number, message = id, conn_id = ?msg.conn_id,
        duration_ms, new = counts.new, "voicemail message deposited");
    metrics::counter!("voicemail_messages_deposited_total").increment(1);
    publish_deposit(vm, mailbox, &msg, q.conn_id(), counts).await;
    vm.changed(tenant, &mailbox.number);
    Ok(true)
}

async fn publish_deposit(
    vm: &Shared,
    mailbox: &Mailbox,
    msg: &NewMessage,
    conn: Option<ConnId>,
    counts: Counts,
) {
    let Some(bus) = &vm.bus else { return };
    let event = Event::EventMessageDeposited(MessageAttrs {
        tenant: msg.tenant.clone(),
        this_dn: mailbox.number.clone(),
        message_id: msg.id.clone(),
        owner_agent: mailbox.owner_agent.clone(),
        owner_group: mailbox.owner_group.clone(),
        other_dn: msg.caller.clone(),
        conn_id: conn,
        duration_ms: msg.duration_ms,
        new_messages: counts.new,
        old_messages: counts.saved,
        user_data: msg.user_data.clone(),
        ts_ms: msg.received_ms,
    });
    if let Err(e) = publish_event(&**bus, &event).await {
        // The message is stored; only the notification is lost.
        tracing::warn!(tenant = msg.tenant, error = %e, "cannot publish EventMessageDeposited");
        metrics::counter!("voicemail_publish_errors_total").increment(1);
    }
}

async fn greeting_audio(
    State(vm): State<Shared>,
    Path((tenant, file)): Path<(String, String)>,
) -> Response {
    let number = file.strip_suffix(".wav").unwrap_or("");
    if vm.mailbox(&tenant, number).is_none() {
        return problem(ApiProblem::not_found("no such mailbox"));
    }
    match tokio::fs::read(vm.greeting_path(&tenant, number)).await {
        Ok(b) => wav(b),
        Err(_) => problem(ApiProblem::not_found(
            "the mailbox has no recorded greeting",
        )),
    }
}

// ---- access ----

#[derive(Deserialize)]
struct AccessQuery {
    #[serde(default)]
    caller: String,
    mailbox: Option<String>,
    /// Wrong PINs so far.
    #[serde(default)]
    failed: u32,
    /// The mailbox was chosen from the caller's DN (so only the PIN is asked again).
    #[serde(default)]
    fixed: bool,
    pin: Option<String>,
}

async fn access_doc(
    State(vm): State<Shared>,
    Path(tenant): Path<String>,
    Query(q): Query<AccessQuery>,
) -> Response {
    let plan = vm.plan.current();
    if !plan.has_tenant(&tenant) {
        return vxml(docs::goodbye("Voicemail is not available. Goodbye."));
    }
    let boxes = menu::mailboxes_of_caller(&q.caller, plan.agents(&tenant), plan.mailboxes(&tenant));
    let fixed = match boxes.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    };
    vxml(login_doc(&tenant, &q.caller, fixed.as_deref(), 0, ""))
}

fn login_doc(tenant: &str, caller: &str, fixed: Option<&str>, failed: u32, intro: &str) -> String {
    let failed = failed.to_string();
    let mut query = vec![("caller", caller), ("failed", failed.as_str())];
    if let Some(m) = fixed {
        query.push(("mailbox", m));
        query.push(("fixed", "true"));
    }
    let next = url(
        &format!("/voicemail/v1/tenants/{tenant}/access/login"),
        &query,
    );
    let intro = match fixed {
        Some(m) if intro.is_empty() => format!("Mailbox {}.", docs::digits(m)),
        _ => intro.to_owned(),
    };
    docs::login(&intro, fixed.is_none(), &next)
}

async fn login(
    State(vm): State<Shared>,
    Path(tenant): Path<String>,
    Query(q): Query<AccessQuery>,
) -> Response {
    let number = q.mailbox.clone().unwrap_or_default();
    let mailbox = vm.mailbox(&tenant, &number);
    // An unknown mailbox counts as a wrong PIN: the menu does not tell which was wrong.
    let expected = mailbox.as_ref().map_or("", |m| m.pin.as_str());
    let entered = q.pin.as_deref().unwrap_or("");
    match (menu::check_pin(expected, entered, q.failed), mailbox) {
        (PinOutcome::Accepted, Some(mailbox)) => {
            open_session(&vm, &tenant, &q.caller, &mailbox).await
        }
        (outcome @ (PinOutcome::Retry { .. } | PinOutcome::Accepted), _) => {
            // Accepted without a mailbox cannot happen (an empty PIN never matches); count it
            // as a wrong try all the same.
            let failed = match outcome {
                PinOutcome::Retry { failed } => failed,
                _ => q.failed + 1,
            };
            tracing::info!(
                tenant,
                mailbox = number,
                caller = q.caller,
                failed,
                "wrong voicemail PIN"
            );
            metrics::counter!("voicemail_pin_failures_total").increment(1);
            let fixed = q.fixed.then_some(number.as_str());
            vxml(login_doc(
                &tenant,
                &q.caller,
                fixed,
                failed,
                "That is not correct.",
            ))
        }
        (PinOutcome::Locked, _) => {
            tracing::warn!(
                tenant,
                mailbox = number,
                caller = q.caller,
                "voicemail PIN: too many wrong tries"
            );
            metrics::counter!("voicemail_pin_failures_total").increment(1);
            metrics::counter!("voicemail_lockouts_total").increment(1);
            vxml(docs::goodbye(
                "That is not correct. Too many wrong attempts. Goodbye.",
            ))
        }
    }
}

async fn open_session(vm: &Shared, tenant: &str, caller: &str, mailbox: &Mailbox) -> Response {
    let (store, t, m) = (vm.store.clone(), tenant.to_owned(), mailbox.number.clone());
    let messages = match blocking(move || store.messages(&t, &m)).await {
        Ok(m) => m,
        Err(p) => return problem(p),
    };
    let plan = vm.plan.current();
    let session = Session {
        tenant: tenant.to_owned(),
        mailbox: mailbox.number.clone(),
        listener: menu::listener(caller, plan.agents(tenant)),
        ids: menu::play_order(&messages),
        started_ms: now_ms(),
    };
    let token = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    tracing::info!(
        tenant,
        mailbox = mailbox.number,
        listener = session.listener,
        "voicemail login"
    );
    metrics::counter!("voicemail_logins_total").increment(1);
    vm.put_session(&token, session);
    let counts = Counts::of(&messages);
    vxml(docs::main_menu(
        "",
        counts.new,
        counts.saved,
        &session_base(&token),
    ))
}

fn session_base(token: &str) -> String {
    format!("/voicemail/v1/sessions/{token}")
}

fn ended() -> Response {
    vxml(docs::goodbye("Your session has ended. Goodbye."))
}

async fn menu_doc(State(vm): State<Shared>, Path(token): Path<String>) -> Response {
    let Some(s) = vm.session(&token) else {
        return ended();
    };
    main_menu(&vm, &token, &s, "").await
}

async fn main_menu(vm: &Shared, token: &str, s: &Session, before: &str) -> Response {
    match vm.counts(&s.tenant, &s.mailbox).await {
        Ok(c) => vxml(docs::main_menu(
            before,
            c.new,
            c.saved,
            &session_base(token),
        )),
        Err(p) => problem(p),
    }
}

#[derive(Deserialize)]
struct PlayQuery {
    #[serde(default)]
    i: usize,
    k: Option<String>,
}

async fn play_doc(
    State(vm): State<Shared>,
    Path(token): Path<String>,
    Query(q): Query<PlayQuery>,
) -> Response {
    let Some(s) = vm.session(&token) else {
        return ended();
    };
    play_at(&vm, &token, &s, q.i, "").await
}

/// Plays the message at `index`, marking it heard by the session's listener.
async fn play_at(vm: &Shared, token: &str, s: &Session, index: usize, before: &str) -> Response {
    let Some(id) = s.id_at(index).map(str::to_owned) else {
        let menu = url(&format!("{}/menu", session_base(token)), &[]);
        return vxml(docs::say_then(
            &format!("{before} No more messages."),
            &menu,
        ));
    };
    let heard = Heard {
        by: s.listener.clone(),
        at_ms: now_ms(),
    };
    let (store, t, i) = (vm.store.clone(), s.tenant.clone(), id.clone());
    let marked =
        blocking(move || store.mark_message(&t, &i, MessageState::Saved, Some(heard))).await;
    let msg = match marked {
        Ok(Some(m)) => m,
        // Deleted meanwhile (another member, the REST API): skip it.
        Ok(None) => {
            let s = drop_id(s, index);
            vm.put_session(token, s.clone());
            return Box::pin(play_at(vm, token, &s, index, before)).await;
        }
        Err(p) => return problem(p),
    };
    vm.changed(&s.tenant, &s.mailbox);
    let audio = url(&format!("{}/audio/{id}.wav", session_base(token)), &[]);
    vxml(docs::play(&Play {
        before,
        index,
        caller: msg.message.caller.as_deref(),
        audio: &audio,
        base: &session_base(token),
    }))
}

fn drop_id(s: &Session, index: usize) -> Session {
    let mut s = s.clone();
    if index < s.ids.len() {
        s.ids.remove(index);
    }
    s
}

async fn key_doc(
    State(vm): State<Shared>,
    Path(token): Path<String>,
    Query(q): Query<PlayQuery>,
) -> Response {
    let Some(mut s) = vm.session(&token) else {
        return ended();
    };
    let Some(key) = q.k.as_deref().and_then(MessageKey::parse) else {
        return play_at(&vm, &token, &s, q.i, "").await;
    };
    let (effect, nav) = s.after(q.i, key);
    let before = match effect {
        Some(Effect::Save(id)) => {
            let (store, t) = (vm.store.clone(), s.tenant.clone());
            if let Err(p) =
                blocking(move || store.mark_message(&t, &id, MessageState::Saved, None)).await
            {
                return problem(p);
            }
            "Message saved."
        }
        Some(Effect::Delete(id)) => {
            if let Err(p) = remove_message(&vm, &s.tenant, &id).await {
                return problem(p);
            }
            vm.changed(&s.tenant, &s.mailbox);
            "Message deleted."
        }
        None => "",
    };
    vm.put_session(&token, s.clone());
    match nav {
        Nav::Play(i) => play_at(&vm, &token, &s, i, before).await,
        Nav::NoMore => {
            let menu = url(&format!("{}/menu", session_base(&token)), &[]);
            vxml(docs::say_then(
                &format!("{before} No more messages."),
                &menu,
            ))
        }
        Nav::MainMenu => main_menu(&vm, &token, &s, before).await,
    }
}

/// Deletes a message's row, then its file.
async fn remove_message(
    vm: &Shared,
    tenant: &str,
    id: &str,
) -> Result<Option<StoredMessage>, ApiProblem> {
    let (store, t, i) = (vm.store.clone(), tenant.to_owned(), id.to_owned());
    let gone = blocking(move || store.delete_message(&t, &i)).await?;
    if let Some(m) = &gone {
        let _ = tokio::fs::remove_file(vm.dir.join(&m.message.file)).await;
        tracing::info!(
            tenant,
            mailbox = m.message.mailbox,
            message = id,
            "voicemail message deleted"
        );
        metrics::counter!("voicemail_messages_deleted_total").increment(1);
    }
    Ok(gone)
}

/// The audio of message `file` (`ID.wav`) if it is in `mailbox`.
async fn message_audio(vm: &Shared, tenant: &str, mailbox: &str, file: &str) -> Response {
    let id = file.strip_suffix(".wav").unwrap_or(file);
    if !is_message_id(id) {
        return problem(ApiProblem::not_found("no such message"));
    }
    let (store, t, i) = (vm.store.clone(), tenant.to_owned(), id.to_owned());
    let msg = match blocking(move || store.message(&t, &i)).await {
        Ok(Some(m)) if m.message.mailbox == mailbox => m,
        Ok(_) => return problem(ApiProblem::not_found("no such message")),
        Err(p) => return problem(p),
    };
    match tokio::fs::read(vm.dir.join(&msg.message.file)).await {
        Ok(b) => wav(b),
        Err(e) => problem(db_problem(format!("the message's audio is missing: {e}"))),
    }
}

async fn session_audio(
    State(vm): State<Shared>,
    Path((token, file)): Path<(String, String)>,
) -> Response {
    let Some(s) = vm.session(&token) else {
        return problem(ApiProblem::not_found("no such session"));
    };
    message_audio(&vm, &s.tenant, &s.mailbox, &file).await
}

async fn greeting_doc(State(vm): State<Shared>, Path(token): Path<String>) -> Response {
    if vm.session(&token).is_none() {
        return ended();
    }
    let base = session_base(&token);
    vxml(docs::record_greeting(
        &url(&format!("{base}/greeting"), &[]),
        &url(&format!("{base}/menu"), &[]),
    ))
}

async fn greeting_upload(
    State(vm): State<Shared>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(s) = vm.session(&token) else {
        return ended();
    };
    let (audio, _) = match wav_part(&headers, &body, "greeting") {
        Ok(a) => a,
        Err(p) => return problem(p),
    };
    if let Err(e) = write_durably(vm.greeting_path(&s.tenant, &s.mailbox), audio).await {
        return problem(db_problem(format!("cannot save the greeting: {e}")));
    }
    tracing::info!(
        tenant = s.tenant,
        mailbox = s.mailbox,
        "voicemail greeting recorded"
    );
    main_menu(&vm, &token, &s, "Your greeting was saved.").await
}

async fn bye_doc() -> Response {
    vxml(docs::goodbye("Goodbye."))
}

// ---- REST ----

/// The tenant's mailbox `key`. API keys are checked before: the desktop API's gate stands
/// in front of every `/v1/` route (an agent's key reaches its own and its groups' mailboxes).
fn api_mailbox(vm: &Vm, tenant: &str, key: &str) -> Result<Mailbox, ApiProblem> {
    let plan = vm.plan.current();
    if !plan.has_tenant(tenant) {
        return Err(ApiProblem::not_found(format!("no tenant {tenant:?}")));
    }
    plan.mailbox(tenant, key)
        .cloned()
        .ok_or_else(|| ApiProblem::not_found(format!("no mailbox {key:?} in tenant {tenant:?}")))
}

fn message_json(m: &StoredMessage) -> serde_json::Value {
    json!({
        "id": m.message.id,
        "caller": m.message.caller,
        "conn_id": m.message.conn_id,
        "received_ms": m.message.received_ms,
        "duration_ms": m.message.duration_ms,
        "state": m.state,
        "heard_by": m.heard_by,
        "user_data": m.message.user_data,
    })
}

async fn api_list(
    State(vm): State<Shared>,
    Path((tenant, key)): Path<(String, String)>,
) -> Response {
    let mailbox = match api_mailbox(&vm, &tenant, &key) {
        Ok(m) => m,
        Err(p) => return problem(p),
    };
    let (store, t, m) = (vm.store.clone(), tenant.clone(), mailbox.number.clone());
    match blocking(move || store.messages(&t, &m)).await {
        Ok(messages) => {
            let counts = Counts::of(&messages);
            let items: Vec<_> = messages.iter().map(message_json).collect();
            axum::Json(json!({
                "tenant": tenant,
                "mailbox": mailbox.number,
                "new": counts.new,
                "saved": counts.saved,
                "messages": items,
            }))
            .into_response()
        }
        Err(p) => problem(p),
    }
}

async fn api_audio(
    State(vm): State<Shared>,
    Path((tenant, key, id)): Path<(String, String, String)>,
) -> Response {
    if let Err(p) = api_mailbox(&vm, &tenant, &key) {
        return problem(p);
    }
    message_audio(&vm, &tenant, &key, &id).await
}

/// A message of the mailbox, or 404.
async fn api_message(
    vm: &Shared,
    tenant: &str,
    key: &str,
    id: &str,
) -> Result<StoredMessage, ApiProblem> {
    let missing = || ApiProblem::not_found(format!("no message {id:?} in mailbox {key:?}"));
    if !is_message_id(id) {
        return Err(missing());
    }
    let (store, t, i) = (vm.store.clone(), tenant.to_owned(), id.to_owned());
    match blocking(move || store.message(&t, &i)).await? {
        Some(m) if m.message.mailbox == key => Ok(m),
        _ => Err(missing()),
    }
}

async fn api_read(
    State(vm): State<Shared>,
    Path((tenant, key, id)): Path<(String, String, String)>,
) -> Response {
    if let Err(p) = api_mailbox(&vm, &tenant, &key) {
        return problem(p);
    }
    if let Err(p) = api_message(&vm, &tenant, &key, &id).await {
        return problem(p);
    }
    let heard = Heard {
        by: "api".into(),
        at_ms: now_ms(),
    };
    let (store, t, i) = (vm.store.clone(), tenant.clone(), id.clone());
    match blocking(move || store.mark_message(&t, &i, MessageState::Saved, Some(heard))).await {
        Ok(Some(m)) => {
            vm.changed(&tenant, &key);
            axum::Json(message_json(&m)).into_response()
        }
        Ok(None) => problem(ApiProblem::not_found(format!("no message {id:?}"))),
        Err(p) => problem(p),
    }
}

async fn api_delete(
    State(vm): State<Shared>,
    Path((tenant, key, id)): Path<(String, String, String)>,
) -> Response {
    if let Err(p) = api_mailbox(&vm, &tenant, &key) {
        return problem(p);
    }
    if let Err(p) = api_message(&vm, &tenant, &key, &id).await {
        return problem(p);
    }
    match remove_message(&vm, &tenant, &id).await {
        Ok(_) => {
            vm.changed(&tenant, &key);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(p) => problem(p),
    }
}

// ---- retention ----

async fn sweep_until(vm: Shared, drain: CancellationToken) -> anyhow::Result<()> {
    loop {
        sweep(&vm).await;
        tokio::select! {
            _ = drain.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// Deletes every message past its mailbox's retention.
async fn sweep(vm: &Shared) {
    let plan = vm.plan.current();
    let boxes: Vec<(String, Mailbox)> = plan
        .tenant_names()
        .flat_map(|t| plan.mailboxes(t).map(move |m| (t.to_owned(), m.clone())))
        .collect();
    let now = now_ms();
    for (tenant, m) in boxes {
        let cutoff = menu::retention_cutoff(now, m.retention_days);
        let (store, t, n) = (vm.store.clone(), tenant.clone(), m.number.clone());
        match blocking(move || store.expire_messages(&t, &n, cutoff)).await {
            Ok(gone) if !gone.is_empty() => {
                for g in &gone {
                    let _ = tokio::fs::remove_file(vm.dir.join(&g.message.file)).await;
                }
                tracing::info!(
                    tenant,
                    mailbox = m.number,
                    expired = gone.len(),
                    "voicemail retention"
                );
                metrics::counter!("voicemail_messages_expired_total").increment(gone.len() as u64);
                vm.changed(&tenant, &m.number);
            }
            Ok(_) => {}
            Err(p) => tracing::warn!(
                tenant,
                mailbox = m.number,
                error = p.detail,
                "retention sweep"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialplan::Dialplan;
    use axum::body::Body;
    use axum::http::Request;
    use switchboard_store::SqliteStore;
    use tower::ServiceExt;

    fn setup() -> (Router, SharedStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(SqliteStore::open_in_memory().unwrap());
        store.seed(&switchboard_config::Config::demo()).unwrap();
        let plan = Arc::new(DialplanCell::new(Dialplan::build(
            &store.load_all().unwrap(),
        )));
        let running = start(
            dir.path().to_path_buf(),
            store.clone(),
            None,
            plan,
            None,
            CancellationToken::new(),
        );
        (running.router, store, dir)
    }

    fn form(wav: &[u8]) -> Vec<u8> {
        let mut b = b"--B\r\nContent-Disposition: form-data; name=\"msg\"; filename=\"vxml-1.wav\"\r\nContent-Type: audio/wav\r\n\r\n".to_vec();
        b.extend_from_slice(wav);
        b.extend_from_slice(b"\r\n--B--\r\n");
        b
    }

    async fn send(router: &Router, method: &str, uri: &str, body: Vec<u8>) -> (u16, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "multipart/form-data; boundary=B")
            .body(Body::from(body))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_long_message_is_stored_before_the_answer() {
        let (router, store, dir) = setup();
        // 150 s: above axum's default body limit.
        let wav = switchboard_media::audio::write_wav(&vec![1000i16; 150 * 8000], 8000);
        assert!(wav.len() > 2 << 20);
        let uri = "/voicemail/v1/tenants/demo/deposit/8100/message?caller=%2B15551234&conn=00000000000000ff&ud=%7B%22case%22%3A%2242%22%7D";
        let (status, body) = send(&router, "POST", uri, form(&wav)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("has been saved"), "{body}");
        let messages = store.messages("demo", "8100").unwrap();
        assert_eq!(messages.len(), 1);
        let m = &messages[0].message;
        assert_eq!(m.caller.as_deref(), Some("+15551234"));
        assert_eq!(m.conn_id.as_deref(), Some("00000000000000ff"));
        assert_eq!(m.user_data["case"], "42");
        assert_eq!(m.duration_ms, 150_000);
        assert_eq!(std::fs::read(dir.path().join(&m.file)).unwrap(), wav);
    }

    #[tokio::test]
    async fn bad_uploads_and_unknown_mailboxes_are_problems() {
        let (router, store, _dir) = setup();
        let uri = "/voicemail/v1/tenants/demo/deposit/8100/message";
        let (status, _) = send(&router, "POST", uri, b"garbage".to_vec()).await;
        assert_eq!(status, 400);
        let (status, _) = send(&router, "POST", uri, form(b"not a wav")).await;
        assert_eq!(status, 400);
        let wav = switchboard_media::audio::write_wav(&[0i16; 800], 8000);
        let (status, _) = send(
            &router,
            "POST",
            "/voicemail/v1/tenants/demo/deposit/9999/message",
            form(&wav),
        )
        .await;
        assert_eq!(status, 404);
        assert!(store.messages("demo", "8100").unwrap().is_empty());
        // The deposit menu of an unknown mailbox says so instead of recording.
        let (status, doc) = send(
            &router,
            "GET",
            "/voicemail/v1/tenants/demo/deposit/9999",
            Vec::new(),
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            doc.contains("does not exist") && !doc.contains("<record"),
            "{doc}"
        );
        let (status, doc) = send(
            &router,
            "GET",
            "/voicemail/v1/sessions/nosuchtoken/menu",
            Vec::new(),
        )
        .await;
        assert_eq!(status, 200);
        assert!(doc.contains("session has ended"), "{doc}");
    }
}
