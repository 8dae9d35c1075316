//! Where the rest of the code asks the operator's switches (see [`super`]). Each refusal names
//! its switch and is counted (`lodge_admin_refusals_total{switch}`).

use axum::http::StatusCode;
use lodge_ids::{ChannelId, GuildId, UserId};

use super::Setting;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::voice::executor;
use crate::voice::gateway::close;

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

/// The guild's slot cap for a voice connection (Select Protocol), or the close that ends it
/// when the cap cannot be read.
async fn slot_cap(s: &AppState, guild: GuildId) -> Result<Option<u8>, (u16, String)> {
    match s.shared.guild_switches.get(guild).await {
        Ok(g) => Ok(g.max_slots),
        Err(e) => Err((
            close::SERVER_CRASHED,
            format!("voice is temporarily unavailable: {e}"),
        )),
    }
}

/// A WebRTC connection of `guild` whose offer carries `slots` speaker slots: refused, not
/// clamped, above the guild's `max_slots` — the offer holds one receive line per slot, so the
/// client must make a new one. The `Err` is the close (4014, the cap named).
pub async fn webrtc_slots(s: &AppState, guild: GuildId, slots: usize) -> Result<(), (u16, String)> {
    match slot_cap(s, guild).await? {
        Some(max) if slots > usize::from(max) => {
            s.admin.refused(Setting::MaxSlots);
            Err((
                close::DISCONNECTED,
                format!(
                    "slots is {slots} but this guild allows at most {max} (the node operator's \
                     max_slots switch); offer at most {max} recv-only audio transceivers"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// A native (UDP mode) connection of `guild` asking for `slots` speakers: clamped to the
/// guild's `max_slots` — a native client negotiates no receive lines, so fewer slots only
/// means fewer speakers forwarded to it at once.
pub async fn native_slots(
    s: &AppState,
    guild: GuildId,
    slots: usize,
) -> Result<usize, (u16, String)> {
    Ok(match slot_cap(s, guild).await? {
        Some(max) => slots.min(usize::from(max)),
        None => slots,
    })
}
