//! The VoiceXML seam of the media server, in process: a call to `sip:dialog@` reaches the
//! configured `DialogRunner` with the URL and a working stream (its prompt is heard on the
//! caller's RTP socket), and the call is hung up with BYE when the runner returns.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_config::{Config, McpConfig};
use switchboard_media::{MediaEventKind, Playlist};
use switchboard_services::mcp::dialog::{DialogContext, DialogOutcome, DialogRunner};
use switchboard_sip::{HeaderName, Message, Method};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Plays 200 ms of tone, waits for its end, reports the URL and exits.
struct ToneRunner(mpsc::UnboundedSender<String>);

impl DialogRunner for ToneRunner {
    fn run(&self, mut ctx: DialogContext) -> Pin<Box<dyn Future<Output = DialogOutcome> + Send>> {
        let seen = self.0.clone();
        Box::pin(async move {
            let tone = ctx.prompts.load_url("tone:1000/200", None).await;
            let Ok(item) = tone else {
                return DialogOutcome::Error("no tone".into());
            };
            if ctx
                .media
                .play(ctx.stream, 5, Playlist::once(vec![item]))
                .is_err()
            {
                return DialogOutcome::Error("play failed".into());
            }
            while let Some(ev) = ctx.events.recv().await {
                if ev
                    == (MediaEventKind::PlayDone {
                        play: 5,
                        completed: true,
                    })
                {
                    break;
                }
            }
            let _ = seen.send(ctx.url.clone());
            DialogOutcome::Exit(serde_json::json!("done"))
        })
    }
}

/// |sample| of a G.711 µ-law byte (ITU-T G.711 expansion, without the sign).
fn ulaw_magnitude(c: u8) -> u32 {
    let c = !c;
    let exponent = u32::from((c >> 4) & 0x07);
    let mantissa = u32::from(c & 0x0f);
    (((mantissa << 3) + 0x84) << exponent) - 0x84
}

async fn recv_sip(sock: &UdpSocket, deadline: Instant) -> Message {
    let mut buf = vec![0u8; 65536];
    let left = deadline.saturating_duration_since(Instant::now());
    let (n, _) = tokio::time::timeout(left, sock.recv_from(&mut buf))
        .await
        .expect("a SIP message in time")
        .expect("recv");
    Message::parse(Bytes::copy_from_slice(&buf[..n])).expect("parses")
}

#[tokio::test]
async fn dialog_runner_gets_the_call_and_its_end_hangs_up() {
    let dir = std::env::temp_dir().join(format!("mcp-dialog-{}", std::process::id()));
    let cfg = Config {
        data_dir: dir.clone(),
        mcp: McpConfig {
            udp: "127.0.0.1:0".parse().expect("addr"),
            ..McpConfig::default()
        },
        ..Config::default()
    };
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let drain = CancellationToken::new();
    let runner: Arc<dyn DialogRunner> = Arc::new(ToneRunner(seen_tx));
    let mcp = switchboard_services::mcp::role::start(Arc::new(cfg), drain.clone(), Some(runner))
        .await
        .expect("mcp starts");
    let mcp_addr: SocketAddr = mcp.udp.expect("udp bound");

    let sip = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let rtp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = sip.local_addr().expect("addr");
    let rtp_port = rtp.local_addr().expect("addr").port();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    let ruri = format!("sip:dialog@{mcp_addr};voicexml=http://apps.example/start.vxml");
    let invite = format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-d1\r\nFrom: <sip:t@{me}>;tag=t1\r\nTo: <{ruri}>\r\nCall-ID: dialog-1\r\nCSeq: 1 INVITE\r\nContact: <sip:t@{me}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    sip.send_to(invite.as_bytes(), mcp_addr)
        .await
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    let ok = loop {
        let m = recv_sip(&sip, deadline).await;
        match m.status() {
            Some(200) => break m,
            Some(c) if c < 200 => continue,
            other => panic!("INVITE answered {other:?}: {m:?}"),
        }
    };
    let to = ok.get(HeaderName::To).expect("To").to_owned();
    let ack = format!(
        "ACK sip:mcp@{mcp_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-d2\r\nFrom: <sip:t@{me}>;tag=t1\r\nTo: {to}\r\nCall-ID: dialog-1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    sip.send_to(ack.as_bytes(), mcp_addr).await.expect("send");

    // The runner's tone reaches the caller: 200 ms = 10 loud packets.
    let mut loud = 0;
    let mut buf = [0u8; 1500];
    let audio_deadline = Instant::now() + Duration::from_secs(3);
    while loud < 10 && Instant::now() < audio_deadline {
        let left = audio_deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok((n, _))) = tokio::time::timeout(left, rtp.recv_from(&mut buf)).await {
            let payload = &buf[12.min(n)..n];
            let level: u32 = payload.iter().map(|&c| ulaw_magnitude(c)).sum::<u32>()
                / payload.len().max(1) as u32;
            if level > 1000 {
                loud += 1;
            }
        }
    }
    assert_eq!(loud, 10, "the dialog's prompt is heard");

    let url = tokio::time::timeout(Duration::from_secs(3), seen.recv())
        .await
        .expect("the runner ran")
        .expect("url");
    assert_eq!(url, "http://apps.example/start.vxml");

    let bye = recv_sip(&sip, Instant::now() + Duration::from_secs(3)).await;
    assert_eq!(bye.method(), Some(&Method::Bye), "{bye:?}");
    let ok = switchboard_sip::build::response_to(&bye, 200, None).finish();
    sip.send_to(&ok, mcp_addr).await.expect("send");

    drain.cancel();
    tokio::time::timeout(Duration::from_secs(5), mcp.task)
        .await
        .expect("stops after the drain")
        .expect("task")
        .expect("ok");
    let _ = std::fs::remove_dir_all(&dir);
}
