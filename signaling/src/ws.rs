//! What the gateway and the voice gateway share about reading and closing WebSockets.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;

/// Both gateways close with Discord's 4002 ("decode error") for frames they cannot take.
pub const DECODE_ERROR: u16 = 4002;

pub type Tx = futures_util::stream::SplitSink<WebSocket, Message>;
pub type Rx = futures_util::stream::SplitStream<WebSocket>;

/// One inbound frame, judged.
pub enum Inbound {
    /// A JSON payload within the size limit.
    Json(Value),
    /// Ping/pong: nothing to do.
    Ignore,
    /// Refuse with this close code and reason.
    Refuse(u16, String),
    /// The peer closed or the connection broke.
    Gone,
}

pub fn judge(m: Option<Result<Message, axum::Error>>, max_payload: usize) -> Inbound {
    let text = match m {
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(Message::Binary(_))) => {
            return Inbound::Refuse(
                DECODE_ERROR,
                "binary frames (etf, compression) are not supported; send JSON text".into(),
            )
        }
        Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => return Inbound::Ignore,
        _ => return Inbound::Gone,
    };
    if text.len() > max_payload {
        return Inbound::Refuse(
            DECODE_ERROR,
            format!("payload larger than {max_payload} bytes"),
        );
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => Inbound::Json(v),
        Err(_) => Inbound::Refuse(DECODE_ERROR, "payload is not valid JSON".into()),
    }
}

/// Close reasons are limited to 123 bytes by RFC 6455.
pub fn clip(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// How long each half of the closing handshake may take: writing our close frame, then
/// waiting for the client's.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Frames a closing client may still send (read and discarded) before its close frame.
const CLOSE_DRAIN_FRAMES: usize = 512;

/// End a connection with the closing handshake of RFC 6455: [`send_close`], then
/// [`await_close`] if the frame went out.
///
/// Dropping the socket right after our close frame is not enough. Whatever the client sent
/// meanwhile (the payloads that tripped a rate limit, say) sits unread in our receive buffer,
/// and closing a TCP socket with unread data sends a reset, which can reach the client before
/// it has read the close frame: it then sees 1006, not the code that says what went wrong.
/// Callers with state to release do it between the two halves, so the logical end never waits
/// on the client.
pub async fn close_with(tx: &mut Tx, rx: &mut Rx, code: u16, reason: &str) {
    if send_close(tx, code, reason).await {
        await_close(rx).await;
    }
}

/// Send our close frame, waiting at most [`CLOSE_TIMEOUT`]; false if it did not go out (a
/// client that is not reading may never take it: then there is no handshake to wait for).
pub async fn send_close(tx: &mut Tx, code: u16, reason: &str) -> bool {
    tracing::debug!(code, reason, "closing WebSocket");
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: clip(reason).into(),
    }));
    matches!(
        tokio::time::timeout(CLOSE_TIMEOUT, tx.send(frame)).await,
        Ok(Ok(()))
    )
}

/// The client closed first: its close frame's reply is queued, and goes out with a flush
/// (bounded by [`CLOSE_TIMEOUT`]) before the socket is dropped, so the client sees its own
/// close completed rather than 1006. On a broken socket the flush just fails.
pub async fn reply_close(tx: &mut Tx) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, tx.flush()).await;
}

/// Read (and discard) what the client still sends until its close frame or the end of the
/// stream: at most [`CLOSE_DRAIN_FRAMES`] frames within [`CLOSE_TIMEOUT`].
pub async fn await_close(rx: &mut Rx) {
    let drain = async {
        for _ in 0..CLOSE_DRAIN_FRAMES {
            match rx.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(100);
        let c = clip(&s);
        assert!(c.len() <= 123 && s.starts_with(&c));
    }

    #[test]
    fn judge_table() {
        let t = |s: &str| Some(Ok(Message::Text(s.to_string().into())));
        assert!(matches!(judge(t("{\"op\":1}"), 100), Inbound::Json(_)));
        assert!(matches!(judge(t("{"), 100), Inbound::Refuse(4002, _)));
        assert!(
            matches!(judge(t(&"1".repeat(101)), 100), Inbound::Refuse(4002, r) if r.contains("100"))
        );
        assert!(matches!(
            judge(Some(Ok(Message::Binary(vec![1].into()))), 100),
            Inbound::Refuse(4002, _)
        ));
        assert!(matches!(judge(None, 100), Inbound::Gone));
    }
}
