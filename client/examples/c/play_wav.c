/*
 * play_wav.c: join a Lodge voice channel from C, play a WAV file into it, and report what the
 * channel sounded like from here. Shows the whole C API: join, callbacks, stats, mute, leave.
 *
 *   cc -o play_wav play_wav.c -I client/include -L target/debug -llodge_client \
 *      -Wl,-rpath,target/debug
 *   ./play_wav http://127.0.0.1:8080 "$TOKEN" "$GUILD" "$CHANNEL" tone.wav 4
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "lodge_client.h"

/* What the playout callback saw: callbacks, samples and their energy (the others' voices). */
struct heard {
    unsigned long frames;
    unsigned long samples;
    double energy;
};

static void on_playout(void *user_data, const int16_t *samples, size_t count) {
    struct heard *h = user_data;
    for (size_t i = 0; i < count; i++) {
        h->energy += (double)samples[i] * samples[i];
    }
    h->frames++;
    h->samples += count;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s URL TOKEN GUILD_ID CHANNEL_ID FILE.wav SECONDS\n", argv[0]);
        return 2;
    }
    struct heard heard = {0, 0, 0.0};
    LodgeJoinOptions opts = {0};
    opts.base_url = argv[1];
    opts.token = argv[2];
    opts.guild_id = argv[3];
    opts.channel_id = argv[4];
    opts.play_wav = argv[5];
    opts.mode = 0; /* aead_aes256_gcm_rtpsize */
    LodgeCallbacks cb = {0};
    cb.user_data = &heard;
    cb.playout = on_playout;

    char err[512];
    if (lodge_client_abi() != LODGE_CLIENT_ABI) {
        fprintf(stderr, "liblodge_client has ABI %u, this program was built for %u: rebuild it\n",
                lodge_client_abi(), (unsigned)LODGE_CLIENT_ABI);
        return 1;
    }
    printf("lodge-client %s\n", lodge_client_version());
    LodgeCall *call = lodge_call_join(&opts, &cb, err, sizeof err);
    if (call == NULL) {
        fprintf(stderr, "could not join: %s\n", err);
        return 1;
    }
    int seconds = atoi(argv[6]);
    for (int s = 1; s <= seconds; s++) {
        sleep_ms(1000);
        LodgeStats st;
        if (lodge_call_stats(call, &st) == 0) {
            printf("[%d s] sent %llu packets at %u kbps (FEC %s), received %llu, %u speaker(s), "
                   "playout delay %.0f ms + %.0f ms to the output%s\n",
                   s, (unsigned long long)st.packets_sent, st.target_bitrate_bps / 1000,
                   st.fec ? "on" : "off", (unsigned long long)st.packets_received,
                   st.speakers, st.mean_playout_delay_ms, st.mean_output_wait_ms,
                   st.ended ? " (ended)" : "");
            if (st.uplink_fraction_lost >= 0) {
                printf("      uplink loss %.1f%%, round trip %.0f ms\n",
                       st.uplink_fraction_lost * 100.0, st.round_trip_time_ms);
            }
            if (st.dave_protocol_version > 0 && st.dave_in_group) {
                printf("      end-to-end encrypted (DAVE), privacy code %s\n", st.dave_privacy_code);
            }
            if (st.ended) {
                break;
            }
        }
    }
    /* Muting is one call; the channel sees it at once. */
    if (lodge_call_set_mute(call, true) != 0) {
        fprintf(stderr, "the call ended before we left\n");
    }
    int rc = lodge_call_leave(call);
    printf("played %lu ticks of the others, mean power %.1f; left %s\n", heard.frames,
           heard.samples ? heard.energy / heard.samples : 0.0, rc == 0 ? "cleanly" : "after an error");
    return rc == 0 ? 0 : 1;
}
