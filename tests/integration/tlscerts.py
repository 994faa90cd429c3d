"""Throwaway X.509 material for the TLS integration tests, made with the openssl CLI.

    certs = tlscerts.TlsCerts()       # a fresh directory under /tmp with everything below
    certs.ca.cert                     # root CA certificate (PEM path)
    certs.other_ca.cert               # a second, unrelated CA: the "wrong CA" tests
    certs.server                      # CN=localhost, SAN DNS:localhost + IP:127.0.0.1, by ca
    certs.server_noip                 # CN=localhost, SAN DNS:localhost only, by ca
    certs.wrong_host                  # CN=wrong-host.invalid, SAN DNS:wrong-host.invalid, by ca
    certs.other_server                # like server, but signed by other_ca
    certs.client("alice")             # CN=alice, clientAuth, by ca (made once per name)
    certs.issue("name", cn=..., dns=(...), ips=(...), ca=certs.ca)   # anything else
    certs.destroy()

Each certificate is a Cert: .cert and .key (paths), .serial (int, unique in the directory),
.cn. Keys are EC P-256 (fast to make), mode 0600 and owned by the user that runs Postgres and
pgfunnel (pfhelpers.RUN_USER when the tests run as root): Postgres refuses a key file other
users can read, and pgfunnel reads its key after dropping privileges (and again on RELOAD).
Certificates are 0644. The directory is pfhelpers.make_tempdir()'s (0700, RUN_USER's).

SslCluster is a pfhelpers.PgCluster with ssl=on (certs.server, the CA as ssl_ca_file) and a
pg_hba.conf that has only `hostssl` lines for TCP: a plaintext TCP login is refused with
Postgres's 'no pg_hba.conf entry for host "127.0.0.1", user ..., no encryption'. The role
CERT_USER logs in with a client certificate only (hba method cert). The unix socket keeps md5,
so nothing else about the fixture changes.

Only the standard library and the openssl command are used.
"""

import os
import random
import shutil
import ssl
import subprocess
import textwrap

import pfhelpers

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

# A role that may log in to SslCluster only with a client certificate (CN = its name).
CERT_USER = "certuser"

_CA_CONF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
O = pgfunnel tests
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

_LEAF_EXT = """\
[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = {eku}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
{san}
"""


class Cert:
    """One certificate and its key (paths), its serial number and subject CN."""

    def __init__(self, name, cert, key, serial, cn, issuer=None):
        self.name = name
        self.cert = cert
        self.key = key
        self.serial = serial
        self.cn = cn
        self.issuer = issuer

    def pem(self):
        with open(self.cert, encoding="ascii") as f:
            return f.read()

    def der(self):
        return ssl.PEM_cert_to_DER_cert(self.pem())

    def __repr__(self):
        return "<Cert %s CN=%s serial=%d>" % (self.name, self.cn, self.serial)


class TlsCerts:
    def __init__(self, directory=None):
        self.dir = directory or pfhelpers.make_tempdir("pgfunnel-tls.")
        self._serials = set()
        self._clients = {}
        self.ca = self.make_ca("ca", "pgfunnel test root CA")
        self.other_ca = self.make_ca("other-ca", "pgfunnel test unrelated CA")
        self.server = self.issue("server", cn="localhost", dns=("localhost",),
                                 ips=("127.0.0.1",))
        self.server_noip = self.issue("server-noip", cn="localhost", dns=("localhost",))
        self.wrong_host = self.issue("wrong-host", cn="wrong-host.invalid",
                                     dns=("wrong-host.invalid",))
        self.other_server = self.issue("other-server", cn="localhost", dns=("localhost",),
                                       ips=("127.0.0.1",), ca=self.other_ca)

    # -- plumbing

    def path(self, name):
        return os.path.join(self.dir, name)

    def _openssl(self, *args):
        res = subprocess.run([OPENSSL] + list(args), cwd=self.dir, capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, "openssl %s failed:\n%s%s" % (
            " ".join(args), res.stdout, res.stderr)
        return res.stdout

    def _new_serial(self):
        while True:
            serial = random.randrange(1 << 32, 1 << 62)
            if serial not in self._serials:
                self._serials.add(serial)
                return serial

    def _own(self, path, mode):
        os.chmod(path, mode)
        pfhelpers.chown_run_user(path)

    def _write(self, name, text):
        path = self.path(name)
        with open(path, "w", encoding="ascii") as f:
            f.write(text)
        return path

    # -- making certificates

    def make_ca(self, name, cn):
        """A self-signed root CA (name.crt, name.key)."""
        conf = self._write(name + ".cnf", _CA_CONF.format(cn=cn))
        cert, key = self.path(name + ".crt"), self.path(name + ".key")
        serial = self._new_serial()
        self._openssl("req", "-x509", "-new", "-config", conf, "-extensions", "v3_ca",
                      "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", key, "-out", cert, "-days", "3650", "-sha256",
                      "-set_serial", str(serial))
        self._own(key, 0o600)
        self._own(cert, 0o644)
        return Cert(name, cert, key, serial, cn)

    def issue(self, name, cn, dns=(), ips=(), ca=None, client=False):
        """A leaf certificate name.crt / name.key signed by ca (default: the root CA) with
        subject CN=cn and the given DNS / IP subjectAltNames (none: no SAN extension).
        Written to a temporary name first and renamed, so a reader never sees half a file."""
        ca = ca or self.ca
        san = ", ".join(["DNS:" + d for d in dns] + ["IP:" + i for i in ips])
        ext = self._write(name + ".ext", _LEAF_EXT.format(
            eku="clientAuth" if client else "serverAuth, clientAuth",
            san="subjectAltName = " + san if san else ""))
        key, csr = self.path(name + ".key.new"), self.path(name + ".csr")
        cert = self.path(name + ".crt.new")
        serial = self._new_serial()
        self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", key, "-out", csr, "-subj",
                      "/O=pgfunnel tests/CN=" + cn)
        self._openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
                      "-set_serial", str(serial), "-days", "3650", "-sha256",
                      "-extfile", ext, "-extensions", "v3_leaf", "-out", cert)
        self._own(key, 0o600)
        self._own(cert, 0o644)
        os.replace(key, self.path(name + ".key"))
        os.replace(cert, self.path(name + ".crt"))
        os.unlink(csr)
        return Cert(name, self.path(name + ".crt"), self.path(name + ".key"), serial, cn, ca)

    def client(self, user):
        """A client certificate with CN=user (signed by the root CA), made on first use."""
        if user not in self._clients:
            self._clients[user] = self.issue("client-" + user, cn=user, client=True)
        return self._clients[user]

    def install(self, cert, name):
        """Copy cert's certificate and key to name.crt / name.key (same owner and modes),
        replacing what is there atomically (a rename): the files a configuration points at,
        which a test then swaps for another certificate before a RELOAD. Returns a Cert for
        the new paths with cert's serial and CN."""
        crt, key = self.path(name + ".crt"), self.path(name + ".key")
        for src, dst, mode in ((cert.key, key, 0o600), (cert.cert, crt, 0o644)):
            tmp = dst + ".new"
            shutil.copyfile(src, tmp)
            self._own(tmp, mode)
            os.replace(tmp, dst)
        return Cert(name, crt, key, cert.serial, cert.cn, cert.issuer)

    def bundle(self, name, *certs):
        """A PEM file holding every given certificate (e.g. two CAs for a rotation)."""
        path = self._write(name, "".join(c.pem() for c in certs))
        self._own(path, 0o644)
        return path

    def destroy(self):
        pfhelpers.remove_tree(self.dir)


# ---------------------------------------------------------------- served certificates


def cert_serial(der):
    """The serial number of a DER certificate (a minimal DER walk: Certificate ->
    TBSCertificate -> [0] version (optional) -> serialNumber)."""
    def header(buf, pos):
        tag = buf[pos]
        n = buf[pos + 1]
        pos += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(buf[pos:pos + k], "big")
            pos += k
        return tag, n, pos

    tag, _, pos = header(der, 0)          # Certificate SEQUENCE
    assert tag == 0x30
    tag, _, pos = header(der, pos)        # TBSCertificate SEQUENCE
    assert tag == 0x30
    tag, n, inner = header(der, pos)
    if tag == 0xA0:                       # [0] EXPLICIT version
        pos = inner + n
        tag, n, inner = header(der, pos)
    assert tag == 0x02, "no serialNumber INTEGER (tag %#x)" % tag
    return int.from_bytes(der[inner:inner + n], "big", signed=True)


def describe_pem(pem):
    """openssl x509 -noout -subject -serial of a PEM certificate (text, for messages)."""
    res = subprocess.run([OPENSSL, "x509", "-noout", "-subject", "-serial"], input=pem,
                         capture_output=True, text=True, timeout=30)
    return (res.stdout + res.stderr).strip()


# ---------------------------------------------------------------- Postgres with ssl=on


class SslCluster(pfhelpers.PgCluster):
    """A PgCluster with ssl=on and TCP logins over TLS only (see the module docstring).

    certs: a TlsCerts; server: the Cert Postgres serves (default certs.server)."""

    def __init__(self, certs, server=None):
        super().__init__()
        self.certs = certs
        self.server_cert = server or certs.server
        self.tls_on = False

    def start(self):
        super().start()  # plain TCP allowed while the roles are made
        try:
            with self.connect(autocommit=True) as conn:
                conn.execute("CREATE ROLE %s LOGIN" % CERT_USER)
                conn.execute("GRANT ALL ON SCHEMA public TO %s" % CERT_USER)
            with open(os.path.join(self.datadir, "postgresql.conf"), "a",
                      encoding="utf-8") as f:
                f.write(textwrap.dedent("""
                    # TLS (tests/integration/tlscerts.py)
                    ssl = on
                    ssl_cert_file = '%s'
                    ssl_key_file = '%s'
                    ssl_ca_file = '%s'
                    """ % (self.server_cert.cert, self.server_cert.key, self.certs.ca.cert)))
            with open(os.path.join(self.datadir, "pg_hba.conf"), "w", encoding="utf-8") as f:
                f.write("# TYPE  DATABASE  USER      ADDRESS       METHOD\n"
                        "local   all       all                     md5\n"
                        "hostssl all       %s  127.0.0.1/32  cert\n"
                        "hostssl all       all       127.0.0.1/32  md5\n" % CERT_USER)
            pfhelpers.restart_cluster(self)
            self.tls_on = True
        except BaseException:
            self.destroy()
            raise
        return self

    def conninfo(self, user=None, dbname="postgres", password=None, host=None, port=None):
        # The fixture's own TCP connections (pg_stat_* queries, new roles) need TLS once on.
        info = super().conninfo(user, dbname, password, host, port)
        return info + " sslmode=require" if self.tls_on and not (host or "").startswith("/") \
            else info
