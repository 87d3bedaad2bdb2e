/* A no-op milter on Debian's libmilter (the reference implementation), for side-by-side
 * benchmarks against wasmail.
 *
 *   cc -O2 -o noop_libmilter noop_libmilter.c -lmilter -lpthread
 *   ./noop_libmilter SOCKET MODE
 *
 * SOCKET is a libmilter spec (unix:/path or inet:PORT@127.0.0.1). MODE "all" registers a
 * callback for every stage (each returns SMFIS_CONTINUE), "eom" only end-of-message, and
 * "all-nr" every stage except DATA, with no reply to headers, end of headers and body
 * chunks (SMFIP_NR_HDR/NR_EOH/NR_BODY, as wasmail negotiates them: the same commands and
 * replies on the wire).
 * With a third argument "hdr" the end-of-message callback adds one header, like the
 * wasmail benchmark plugins do. */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int add_header = 0;
static int no_reply = 0;

static sfsistat cb_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) { return SMFIS_CONTINUE; }
static sfsistat cb_helo(SMFICTX *ctx, char *helo) { return SMFIS_CONTINUE; }
static sfsistat cb_envfrom(SMFICTX *ctx, char **argv) { return SMFIS_CONTINUE; }
static sfsistat cb_envrcpt(SMFICTX *ctx, char **argv) { return SMFIS_CONTINUE; }
static sfsistat cb_data(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat content(void) { return no_reply ? SMFIS_NOREPLY : SMFIS_CONTINUE; }
static sfsistat cb_header(SMFICTX *ctx, char *name, char *value) { return content(); }
static sfsistat cb_eoh(SMFICTX *ctx) { return content(); }
static sfsistat cb_body(SMFICTX *ctx, unsigned char *chunk, size_t len) { return content(); }
/* "all-nr": ask for no replies to content stages and no DATA, where the MTA offers it. */
static sfsistat cb_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
                             unsigned long f2, unsigned long f3, unsigned long *pf0,
                             unsigned long *pf1, unsigned long *pf2, unsigned long *pf3) {
    unsigned long want = SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY | SMFIP_NODATA |
                         SMFIP_NOUNKNOWN;
    *pf0 = f0 & (add_header ? SMFIF_ADDHDRS : 0);
    *pf1 = f1 & want;
    *pf2 = 0;
    *pf3 = 0;
    no_reply = (*pf1 & (SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY)) ==
               (SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY);
    return SMFIS_CONTINUE;
}
static sfsistat cb_abort(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat cb_close(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat cb_eom(SMFICTX *ctx) {
    if (add_header) smfi_addheader(ctx, "X-Bench", "libmilter");
    return SMFIS_CONTINUE;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s SOCKET all|all-nr|eom [hdr]\n", argv[0]);
        return 2;
    }
    int nr = strcmp(argv[2], "all-nr") == 0;
    int all = nr || strcmp(argv[2], "all") == 0;
    add_header = argc > 3 && strcmp(argv[3], "hdr") == 0;
    struct smfiDesc desc;
    memset(&desc, 0, sizeof desc);
    desc.xxfi_name = "noop-libmilter";
    desc.xxfi_version = SMFI_VERSION;
    desc.xxfi_flags = add_header ? SMFIF_ADDHDRS : 0;
    desc.xxfi_eom = cb_eom;
    if (all) {
        desc.xxfi_connect = cb_connect;
        desc.xxfi_helo = cb_helo;
        desc.xxfi_envfrom = cb_envfrom;
        desc.xxfi_envrcpt = cb_envrcpt;
        desc.xxfi_data = cb_data;
        desc.xxfi_header = cb_header;
        desc.xxfi_eoh = cb_eoh;
        desc.xxfi_body = cb_body;
        desc.xxfi_abort = cb_abort;
        desc.xxfi_close = cb_close;
    }
    if (nr) desc.xxfi_negotiate = cb_negotiate;
    if (smfi_setconn(argv[1]) == MI_FAILURE) { fprintf(stderr, "smfi_setconn failed\n"); return 1; }
    if (smfi_register(desc) == MI_FAILURE) { fprintf(stderr, "smfi_register failed\n"); return 1; }
    smfi_setbacklog(256);
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
