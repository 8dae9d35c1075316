//! Where the rest of the code asks the operator's switches (see [`super`]). Each refusal names
//! its switch and is counted (`lodge_admin_refusals_total{switch}`).

use axum::http::StatusCode;
use lodge_ids::{ChannelId, GuildId, UserId};

use super::Setting;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::voice::executor;

/// Discord's "Send messages has been temporarily disabled".
pub const SEND_DISABLED: u32 = 40004;

/// A voice join (gateway op 4, or a moderator's move) of `user` into `channel`: refused while
/// the node's kill switch is thrown or the guild's voice is off. An op 4 for the channel the
/// user is already in (a mute or deafen change) is no join and passes.
pub async fn voice_join(
    s: &AppState,
    guild: GuildId,
    user: UserId,
    channel: ChannelId,
) -> ApiResult<()> {
    let voice_off = s.shared.guild_switches.get(guild).await?.voice_off;
    let frozen = s.admin.joins_frozen();
    if !voice_off && !frozen {
        return Ok(());
    }
    let here = executor::state(s, guild, user)
        .await?
        .is_some_and(|st| st.channel_id == channel);
    if here {
        return Ok(());
    }
    let switch = if voice_off {
        Setting::VoiceOff
    } else {
        Setting::JoinsFrozen
    };
    tracing::debug!(%guild, %user, switch = switch.as_str(), "voice join refused by a switch");
    Err(refuse_join(s, switch))
}

/// After a join's voice state is in place: whether `voice_off` was turned on meanwhile. Its
/// disconnect may have run before there was a state to end (as with a kick, see
/// `voice::service::handle_op4`); reading the switch again now closes that gap. A read that
/// fails lets the join stand: the switch was read once already, before the join.
pub async fn voice_still_on(s: &AppState, guild: GuildId) -> ApiResult<()> {
    match s.shared.guild_switches.get(guild).await {
        Ok(g) if g.voice_off => Err(refuse_join(s, Setting::VoiceOff)),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(%guild, error = %e, "guild switches unreadable after a join");
            Ok(())
        }
    }
}

fn refuse_join(s: &AppState, switch: Setting) -> ApiError {
    s.admin.refused(switch);
    let message = if switch == Setting::VoiceOff {
        "Voice is off in this guild (the node operator's voice_off switch)"
    } else {
        "New voice joins are frozen on this node (the node operator's joins_frozen kill \
         switch); calls in progress continue"
    };
    ApiError::new(StatusCode::FORBIDDEN, 0, message)
}

/// A new message in a channel of `guild`: refused while the guild's messages are frozen.
pub async fn message_create(s: &AppState, guild: GuildId) -> ApiResult<()> {
    if !s.shared.guild_switches.get(guild).await?.messages_frozen {
        return Ok(());
    }
    s.admin.refused(Setting::MessagesFrozen);
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        SEND_DISABLED,
        "Sending messages is temporarily disabled in this guild (the node operator's \
         messages_frozen switch)",
    ))
}

/// A voice connection of `guild` asking for `slots` speaker slots (Select Protocol): refused,
/// not clamped, above the guild's `max_slots` — the offer already carries one receive line per
/// slot, and the client must make a new one. The `Err` is the reason for the close.
pub async fn slots(s: &AppState, guild: GuildId, slots: usize) -> Result<(), String> {
    let cap = match s.shared.guild_switches.get(guild).await {
        Ok(g) => g.max_slots,
        Err(e) => return Err(format!("voice is temporarily unavailable: {e}")),
    };
    match cap {
        Some(max) if slots > usize::from(max) => {
            s.admin.refused(Setting::MaxSlots);
            Err(format!(
                "slots is {slots} but this guild allows at most {max} (the node operator's \
                 max_slots switch); offer at most {max} recv-only audio transceivers"
            ))
        }
        _ => Ok(()),
    }
}
