#include "CCrypto.h"

#include <errno.h>
#include <openssl/evp.h>
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
