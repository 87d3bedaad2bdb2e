/*
 * echo_milter: a small milter built with sendmail's libmilter (the reference
 * implementation), used by wasmail's interop tests (tests/all/milter_libmilter.rs) to
 * check what wasmail's milter client sends and how it reads what a real milter answers.
 *
 * Usage: echo_milter unix:/path/to/socket
 *
 * Behaviour:
 *   - negotiate: requests every action offered (incl. SMFIF_SETSYMLIST), all protocol
 *     steps with replies (protocol flags 0), and asks for macros "j {client_addr}" at
 *     CONNECT;
 *   - MAIL <reject@example.com>: 550 5.7.1 sender rejected;
 *   - RCPT <nobody@example.net>: reject that recipient;
 *   - header X-Verdict: discard|tempfail|accept is applied at end of message;
 *   - end of message: adds X-Seen with a summary of everything seen, inserts X-Top,
 *     changes the first Subject, adds/deletes recipients, changes the sender, sends a
 *     progress packet, quarantines, and (only with "X-Replace: yes") replaces the body
 *     with 100000 bytes of 80-byte lines ("0123456789" repeated to 78 digits + CRLF).
 *
 * Build: gcc -O2 -Wall -o echo_milter echo_milter.c -lmilter -lpthread
 */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <libmilter/mfapi.h>

#define ALL_ACTIONS                                                               \
	(SMFIF_ADDHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_DELRCPT |              \
	 SMFIF_CHGHDRS | SMFIF_QUARANTINE | SMFIF_CHGFROM | SMFIF_ADDRCPT_PAR |       \
	 SMFIF_SETSYMLIST)

#define REPLACEMENT_LEN 100000
#define LINE_LEN 80

struct conn {
	/* per connection */
	char host[256];
	char family;
	unsigned port;
	char addr[INET6_ADDRSTRLEN];
	char helo[256];
	/* per message */
	char from[256];
	char args[512];
	unsigned rcpts;
	unsigned headers;
	unsigned long body;
	char verdict; /* 0, 'd', 't', 'a' */
	int replace;
};

static struct conn *get_conn(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);
	if (c == NULL) {
		c = calloc(1, sizeof(*c));
		if (c == NULL)
			return NULL;
		c->family = 'U';
		strcpy(c->host, "-");
		strcpy(c->addr, "-");
		strcpy(c->helo, "-");
		strcpy(c->from, "-");
		if (smfi_setpriv(ctx, c) != MI_SUCCESS) {
			free(c);
			return NULL;
		}
	}
	return c;
}

static void reset_message(struct conn *c)
{
	strcpy(c->from, "-");
	c->args[0] = '\0';
	c->rcpts = 0;
	c->headers = 0;
	c->body = 0;
	c->verdict = 0;
	c->replace = 0;
}

static void copy(char *dst, size_t size, const char *src)
{
	snprintf(dst, size, "%s", src != NULL ? src : "-");
}

static sfsistat echo_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
			       unsigned long f2, unsigned long f3, unsigned long *pf0,
			       unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	(void)f1;
	(void)f2;
	(void)f3;
	*pf0 = f0 & ALL_ACTIONS;
	*pf1 = 0;
	*pf2 = 0;
	*pf3 = 0;
	if ((f0 & SMFIF_SETSYMLIST) != 0)
		smfi_setsymlist(ctx, SMFIM_CONNECT, "j {client_addr}");
	return SMFIS_CONTINUE;
}

static sfsistat echo_connect(SMFICTX *ctx, char *hostname, _SOCK_ADDR *hostaddr)
{
	struct conn *c = get_conn(ctx);
	if (c == NULL)
		return SMFIS_TEMPFAIL;
	copy(c->host, sizeof(c->host), hostname);
	c->family = 'U';
	c->port = 0;
	strcpy(c->addr, "-");
	if (hostaddr != NULL) {
		if (hostaddr->sa_family == AF_INET) {
			const struct sockaddr_in *sin = (const struct sockaddr_in *)hostaddr;
			c->family = '4';
			c->port = ntohs(sin->sin_port);
			if (inet_ntop(AF_INET, &sin->sin_addr, c->addr, sizeof(c->addr)) == NULL)
				strcpy(c->addr, "?");
		} else if (hostaddr->sa_family == AF_INET6) {
			const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)hostaddr;
			c->family = '6';
			c->port = ntohs(sin6->sin6_port);
			if (inet_ntop(AF_INET6, &sin6->sin6_addr, c->addr, sizeof(c->addr)) == NULL)
				strcpy(c->addr, "?");
		} else if (hostaddr->sa_family == AF_UNIX) {
			c->family = 'L';
		}
	}
	return SMFIS_CONTINUE;
}

static sfsistat echo_helo(SMFICTX *ctx, char *helo)
{
	struct conn *c = get_conn(ctx);
	if (c == NULL)
		return SMFIS_TEMPFAIL;
	copy(c->helo, sizeof(c->helo), helo);
	return SMFIS_CONTINUE;
}

static sfsistat echo_envfrom(SMFICTX *ctx, char **argv)
{
	struct conn *c = get_conn(ctx);
	size_t used = 0;
	int i;
	if (c == NULL)
		return SMFIS_TEMPFAIL;
	reset_message(c);
	copy(c->from, sizeof(c->from), argv[0]);
	for (i = 1; argv[i] != NULL; i++) {
		int n = snprintf(c->args + used, sizeof(c->args) - used, "%s%s",
				 i > 1 ? "," : "", argv[i]);
		if (n < 0 || (size_t)n >= sizeof(c->args) - used)
			break;
		used += (size_t)n;
	}
	if (argv[0] != NULL && strcasecmp(argv[0], "<reject@example.com>") == 0) {
		smfi_setreply(ctx, "550", "5.7.1", "sender rejected");
		return SMFIS_REJECT;
	}
	return SMFIS_CONTINUE;
}

static sfsistat echo_envrcpt(SMFICTX *ctx, char **argv)
{
	struct conn *c = get_conn(ctx);
	if (c == NULL)
		return SMFIS_TEMPFAIL;
	if (argv[0] != NULL && strcasecmp(argv[0], "<nobody@example.net>") == 0)
		return SMFIS_REJECT;
	c->rcpts++;
	return SMFIS_CONTINUE;
}

static sfsistat echo_data(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

static sfsistat echo_unknown(SMFICTX *ctx, const char *cmd)
{
	(void)ctx;
	(void)cmd;
	return SMFIS_CONTINUE;
}

static sfsistat echo_header(SMFICTX *ctx, char *name, char *value)
{
	struct conn *c = get_conn(ctx);
	if (c == NULL)
		return SMFIS_TEMPFAIL;
	c->headers++;
	if (name != NULL && value != NULL) {
		if (strcasecmp(name, "X-Verdict") == 0) {
			if (strcasecmp(value, "discard") == 0)
				c->verdict = 'd';
			else if (strcasecmp(value, "tempfail") == 0)
				c->verdict = 't';
			else if (strcasecmp(value, "accept") == 0)
				c->verdict = 'a';
		} else if (strcasecmp(name, "X-Replace") == 0) {
			c->replace = strcasecmp(value, "yes") == 0;
		}
	}
	return SMFIS_CONTINUE;
}

static sfsistat echo_eoh(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

static sfsistat echo_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
	struct conn *c = get_conn(ctx);
	(void)chunk;
	if (c == NULL)
		return SMFIS_TEMPFAIL;
	c->body += len;
	return SMFIS_CONTINUE;
}

static sfsistat echo_eom(SMFICTX *ctx)
{
	struct conn *c = get_conn(ctx);
	char summary[2048];
	char *mi, *mj;
	sfsistat verdict;
	if (c == NULL)
		return SMFIS_TEMPFAIL;
	mi = smfi_getsymval(ctx, "i");
	mj = smfi_getsymval(ctx, "j");
	snprintf(summary, sizeof(summary),
		 "host=%s family=%c port=%u addr=%s helo=%s from=%s args=%s rcpts=%u "
		 "headers=%u body=%lu i=%s j=%s",
		 c->host, c->family, c->port, c->addr, c->helo, c->from, c->args, c->rcpts,
		 c->headers, c->body, mi != NULL ? mi : "-", mj != NULL ? mj : "-");
	if (smfi_addheader(ctx, "X-Seen", summary) != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	if (smfi_insheader(ctx, 0, "X-Top", "top") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	if (smfi_chgheader(ctx, "Subject", 1, "changed") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	if (smfi_addrcpt(ctx, "<added@example.net>") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	if (smfi_addrcpt_par(ctx, "<par@example.net>", "NOTIFY=NEVER") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	if (smfi_delrcpt(ctx, "<b@example.net>") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	if (smfi_chgfrom(ctx, "<new@example.com>", "SIZE=1") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	if (smfi_progress(ctx) != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	if (smfi_quarantine(ctx, "held by echo") != MI_SUCCESS)
		return SMFIS_TEMPFAIL;
	if (c->replace) {
		unsigned char *body = malloc(REPLACEMENT_LEN);
		int k, ok;
		if (body == NULL)
			return SMFIS_TEMPFAIL;
		for (k = 0; k < REPLACEMENT_LEN; k++) {
			int col = k % LINE_LEN;
			if (col == LINE_LEN - 2)
				body[k] = '\r';
			else if (col == LINE_LEN - 1)
				body[k] = '\n';
			else
				body[k] = (unsigned char)('0' + col % 10);
		}
		ok = smfi_replacebody(ctx, body, REPLACEMENT_LEN) == MI_SUCCESS;
		free(body);
		if (!ok)
			return SMFIS_TEMPFAIL;
	}
	switch (c->verdict) {
	case 'd':
		verdict = SMFIS_DISCARD;
		break;
	case 't':
		verdict = SMFIS_TEMPFAIL;
		break;
	case 'a':
		verdict = SMFIS_ACCEPT;
		break;
	default:
		verdict = SMFIS_CONTINUE;
		break;
	}
	reset_message(c);
	return verdict;
}

static sfsistat echo_abort(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);
	if (c != NULL)
		reset_message(c);
	return SMFIS_CONTINUE;
}

static sfsistat echo_close(SMFICTX *ctx)
{
	struct conn *c = smfi_getpriv(ctx);
	if (c != NULL) {
		smfi_setpriv(ctx, NULL);
		free(c);
	}
	return SMFIS_CONTINUE;
}

static struct smfiDesc echo_desc = {
	"echo_milter",	/* filter name */
	SMFI_VERSION,	/* version code */
	ALL_ACTIONS,	/* flags */
	echo_connect,	/* connection info filter */
	echo_helo,	/* SMTP HELO command filter */
	echo_envfrom,	/* envelope sender filter */
	echo_envrcpt,	/* envelope recipient filter */
	echo_header,	/* header filter */
	echo_eoh,	/* end of header */
	echo_body,	/* body block filter */
	echo_eom,	/* end of message */
	echo_abort,	/* message aborted */
	echo_close,	/* connection cleanup */
	echo_unknown,	/* unknown SMTP commands */
	echo_data,	/* DATA command */
	echo_negotiate	/* option negotiation */
};

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s unix:/path/to/socket\n", argv[0]);
		return 2;
	}
	if (smfi_setconn(argv[1]) == MI_FAILURE) {
		fprintf(stderr, "echo_milter: smfi_setconn(%s) failed\n", argv[1]);
		return 1;
	}
	if (smfi_register(echo_desc) == MI_FAILURE) {
		fprintf(stderr, "echo_milter: smfi_register failed\n");
		return 1;
	}
	if (smfi_opensocket(1) == MI_FAILURE) {
		fprintf(stderr, "echo_milter: smfi_opensocket(%s) failed\n", argv[1]);
		return 1;
	}
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
