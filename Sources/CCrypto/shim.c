#include "CCrypto.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <unistd.h>

int crsnap_sha256_fd(int fd, unsigned char out[32], unsigned long long *bytes) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx) {
        errno = ENOMEM;
        return -1;
    }
    int ret = -1;
    unsigned char buf[1 << 16];
    *bytes = 0;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        errno = EIO;
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            goto out;
        }
        if (n == 0) break;
        if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1) {
            errno = EIO;
            goto out;
        }
        *bytes += (unsigned long long)n;
    }
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx, out, &len) != 1 || len != 32) {
        errno = EIO;
        goto out;
    }
    ret = 0;
out:
    EVP_MD_CTX_free(ctx);
    return ret;
}

struct crsnap_sha256 {
    EVP_MD_CTX *ctx;
};

crsnap_sha256 *crsnap_sha256_new(void) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx) return NULL;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return NULL;
    }
    crsnap_sha256 *h = malloc(sizeof *h);
    if (!h) {
        EVP_MD_CTX_free(ctx);
        return NULL;
    }
    h->ctx = ctx;
    return h;
}

int crsnap_sha256_update(crsnap_sha256 *h, const void *data, size_t len) {
    if (EVP_DigestUpdate(h->ctx, data, len) != 1) {
        errno = EIO;
        return -1;
    }
    return 0;
}

int crsnap_sha256_final(crsnap_sha256 *h, unsigned char out[32]) {
    unsigned int len = 0;
    int ok = EVP_DigestFinal_ex(h->ctx, out, &len) == 1 && len == 32;
    crsnap_sha256_free(h);
    if (!ok) {
        errno = EIO;
        return -1;
    }
    return 0;
}

void crsnap_sha256_free(crsnap_sha256 *h) {
    if (!h) return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}
