/*
 * lodge_client.h: Lodge's native voice client, for C and anything that binds C (Godot
 * GDExtension, Unity's DllImport, Unreal modules). Link liblodge_client.so (or .dylib/.dll).
 *
 * Audio is 48 kHz mono 16-bit: capture takes 960 samples (20 ms) per callback, playout gives
 * 480 (10 ms) per callback; use `count`. Callbacks run on the call's own thread: keep them
 * short, and do not call lodge_call_* for the same call from them.
 */

#ifndef LODGE_CLIENT_H
#define LODGE_CLIENT_H

/* Generated from client/src/ffi.rs by cbindgen: LODGE_BLESS=1 cargo test -p lodge-client --test header */

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
/** This header's ABI version: compare it with lodge_client_abi() before anything else. The
 * structs grow between versions, so a program built against another header would read or write
 * past them. */
#define LODGE_CLIENT_ABI 4


/**
 * A call in progress (opaque).
 */
typedef struct LodgeCall LodgeCall;

/**
 * Where and how to join. Strings are NUL-terminated UTF-8 and are copied: they need not
 * outlive the call to `lodge_call_join`.
 */
typedef struct LodgeJoinOptions {
  /**
   * The server's HTTP base, e.g. "http://127.0.0.1:8080" or "https://lodge.example.org".
   */
  const char *base_url;
  /**
   * The Authorization value: a user token, or "Bot <token>".
   */
  const char *token;
  const char *guild_id;
  const char *channel_id;
  bool self_mute;
  bool self_deaf;
  /**
   * 0: aead_aes256_gcm_rtpsize, 1: aead_xchacha20_poly1305_rtpsize.
   */
  int32_t mode;
  /**
   * Send only while the voice activity detector hears speech.
   */
  bool voice_activity;
  /**
   * A WAV file to send instead of the capture callback (NULL: none).
   */
  const char *play_wav;
  /**
   * Start the WAV file again when it ends.
   */
  bool loop_wav;
  /**
   * Opus bitrate in bits per second (0: 32000).
   */
  uint32_t bitrate_bps;
  /**
   * Join without DAVE, end-to-end encryption (false, the default: take part in it). Without
   * it the call runs with transport encryption only while this client is in it, and
   * channels that require DAVE refuse the client.
   */
  bool no_dave;
  /**
   * A PEM file of CA certificates to trust besides the public web roots, for an https://
   * server whose certificate a private CA signed (NULL: none).
   */
  const char *ca_file;
} LodgeJoinOptions;

/**
 * Fills `samples` (`count` 16-bit samples, 48 kHz mono) with captured audio.
 */
typedef void (*LodgeCaptureFn)(void *user_data,
                               int16_t *samples,
                               size_t count);

/**
 * One tick (10 ms) of the mixed playout (what the speakers should play).
 */
typedef void (*LodgePlayoutFn)(void *user_data,
                               const int16_t *samples,
                               size_t count);

/**
 * One speaker's decoded tick (10 ms) before mixing (`user_id` 0 until the server named the SSRC).
 */
typedef void (*LodgeSpeakerFn)(void *user_data,
                               uint64_t user_id,
                               uint32_t ssrc,
                               const int16_t *samples,
                               size_t count);

/**
 * The audio callbacks; any may be NULL (no capture: silence).
 */
typedef struct LodgeCallbacks {
  /**
   * Passed back to every callback.
   */
  void *user_data;
  LodgeCaptureFn capture;
  LodgePlayoutFn playout;
  LodgeSpeakerFn speaker;
} LodgeCallbacks;

/**
 * Live figures of a call.
 */
typedef struct LodgeStats {
  uint64_t packets_sent;
  uint64_t packets_received;
  /**
   * Datagrams that did not open under the session key: dropped.
   */
  uint64_t packets_undecryptable;
  /**
   * Remote speakers being played out.
   */
  uint32_t speakers;
  /**
   * Over all speakers (getStats names): samples received, concealed, and the mean time a
   * sample decoded from a packet spent in the jitter buffer (until decoded, as WebRTC counts
   * it; not the decoded audio's wait for its 10 ms output tick).
   */
  uint64_t total_samples_received;
  uint64_t concealed_samples;
  double mean_playout_delay_ms;
  /**
   * 1 once the call has ended (left, or a connection lost).
   */
  int32_t ended;
  /**
   * What the encoder sends at now (it follows the node's receiver reports), and whether
   * FEC is on (1) or off (0). Fields are only ever added at the end of this struct.
   */
  uint32_t target_bitrate_bps;
  int32_t fec;
  /**
   * How our voice reaches the node, from its latest receiver report: the share lost since
   * the report before (0..1) and the round trip in ms; both -1 before the first report.
   */
  double uplink_fraction_lost;
  double round_trip_time_ms;
  /**
   * End-to-end encryption (DAVE): the call's protocol version (1: encrypted end to end, 0:
   * transport encryption only, -1: this client does not take part in DAVE); whether we are
   * in the call's group (1) or not yet (0); frames DAVE refused (dropped).
   */
  int32_t dave_protocol_version;
  int32_t dave_in_group;
  uint64_t packets_dave_dropped;
  /**
   * The privacy code members compare to know the call is theirs alone: 30 digits and a
   * NUL, or an empty string outside a group.
   */
  char dave_privacy_code[31];
  /**
   * Over all speakers: the mean time a decoded sample waited for its 10 ms output tick, ms
   * (the wait after `mean_playout_delay_ms`; with whole-period stretching about 5 ms).
   */
  double mean_output_wait_ms;
} LodgeStats;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * Join a voice channel. Returns the call, or NULL with the reason written to `err` (at most
 * `err_len` bytes, NUL-terminated; `err` may be NULL). Blocks until joined: 30 s at most.
 *
 * # Safety
 * `opts` points to a valid `LodgeJoinOptions` whose strings are NUL-terminated; `callbacks`
 * is NULL or valid, and its functions may be called from another thread until
 * `lodge_call_leave` returns; `err` is NULL or has `err_len` writable bytes.
 */
struct LodgeCall *lodge_call_join(const struct LodgeJoinOptions *opts,
                                  const struct LodgeCallbacks *callbacks,
                                  char *err,
                                  size_t err_len);

/**
 * Mute (1) or unmute (0) the microphone; the channel sees it. 0 on success, -1 if the call
 * has ended.
 *
 * # Safety
 * `call` is NULL or a call from `lodge_call_join` not yet left.
 */
int32_t lodge_call_set_mute(struct LodgeCall *call,
                            bool on);

/**
 * Deafen (1) or undeafen (0): nothing is played while deafened.
 *
 * # Safety
 * As for `lodge_call_set_mute`.
 */
int32_t lodge_call_set_deaf(struct LodgeCall *call,
                            bool on);

/**
 * Playback gain for one user: 1.0 unchanged, 0.0 silent, at most 4.0.
 *
 * # Safety
 * As for `lodge_call_set_mute`.
 */
int32_t lodge_call_set_volume(struct LodgeCall *call,
                              uint64_t user_id,
                              float gain);

/**
 * Push-to-talk: -1 open microphone, 0 released, 1 pressed.
 *
 * # Safety
 * As for `lodge_call_set_mute`.
 */
int32_t lodge_call_set_push_to_talk(struct LodgeCall *call,
                                    int32_t state);

/**
 * Move to a new local UDP port (after a network change); the call continues.
 *
 * # Safety
 * As for `lodge_call_set_mute`.
 */
int32_t lodge_call_rebind(struct LodgeCall *call);

/**
 * The call's live figures into `out`. 0 on success, -1 if `call` or `out` is NULL.
 *
 * # Safety
 * `call` as for `lodge_call_set_mute`; `out` is NULL or writable.
 */
int32_t lodge_call_stats(struct LodgeCall *call,
                         struct LodgeStats *out);

/**
 * Leave the channel, wait for the connections to close, and free the call. 0 if the call
 * ended cleanly, -1 if it had ended with an error (or `call` is NULL). `call` is invalid
 * afterwards.
 *
 * # Safety
 * `call` is NULL or a call from `lodge_call_join`, not used again after this.
 */
int32_t lodge_call_leave(struct LodgeCall *call);

/**
 * The library's ABI version: a program compares it with the header's `LODGE_CLIENT_ABI`
 * before anything else (the structs grow between versions, so a mismatch would read or write
 * past them).
 */
uint32_t lodge_client_abi(void);

/**
 * The library's version, a static NUL-terminated string.
 */
const char *lodge_client_version(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* LODGE_CLIENT_H */
