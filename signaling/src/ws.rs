//! What the gateway and the voice gateway share about reading and closing WebSockets.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use serde_json::Value;

/// Both gateways close with Discord's 4002 ("decode error") for frames they cannot take.
pub const DECODE_ERROR: u16 = 4002;

pub type Tx = futures_util::stream::SplitSink<WebSocket, Message>;

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

pub async fn close_with(tx: &mut Tx, code: u16, reason: &str) {
    tracing::debug!(code, reason, "closing WebSocket");
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: clip(reason).into(),
        })))
        .await;
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
