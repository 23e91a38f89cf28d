"""The two brokers the conformance suite and the benchmark compare: a Lepus built from this
checkout and a private RabbitMQ node from Debian's rabbitmq-server package, each on free ports
with its own data directory. `cpu` pins the broker (and every thread it starts) to one core
with taskset, as benches/compare does."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc=None, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("broker exited with status %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listening on port %d after %ds" % (port, timeout))


_TLS = {}


def tls_files():
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate
    (CN=conformance-client), made once per run with openssl; both brokers get the same."""
    if not _TLS:
        d = tempfile.mkdtemp(prefix="conformance-tls-")
        f = lambda name: os.path.join(d, name)  # noqa: E731
        run = lambda *argv: subprocess.run(argv, check=True, capture_output=True)  # noqa: E731
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f("ca.key"),
            "-out", f("ca.pem"), "-days", "3", "-subj", "/CN=Conformance CA")
        exts = {"server": "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                          "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
                "client": "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"}
        subjects = {"server": "/CN=localhost", "client": "/CN=conformance-client"}
        for who in ("server", "client"):
            with open(f(who + ".ext"), "w") as ext:
                ext.write(exts[who])
            run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f(who + ".key"),
                "-out", f(who + ".csr"), "-subj", subjects[who])
            run("openssl", "x509", "-req", "-in", f(who + ".csr"), "-CA", f("ca.pem"), "-CAkey",
                f("ca.key"), "-CAcreateserial", "-out", f(who + ".pem"), "-days", "3",
                "-extfile", f(who + ".ext"))
        _TLS.update(dir=d, ca=f("ca.pem"), server_cert=f("server.pem"), server_key=f("server.key"),
                    client_cert=f("client.pem"), client_key=f("client.key"))
    return _TLS


def tls_conf(port, bind="127.0.0.1:"):
    """The rabbitmq.conf lines of a TLS listener that asks for (but does not require) a
    client certificate, with EXTERNAL offered beside PLAIN and AMQPLAIN."""
    t = tls_files()
    return ("listeners.ssl.default = %s%d\n" % (bind, port)
            + "ssl_options.cacertfile = %s\n" % t["ca"]
            + "ssl_options.certfile = %s\n" % t["server_cert"]
            + "ssl_options.keyfile = %s\n" % t["server_key"]
            + "ssl_options.verify = verify_peer\n"
            + "ssl_options.fail_if_no_peer_cert = false\n"
            + "auth_mechanisms.1 = PLAIN\nauth_mechanisms.2 = AMQPLAIN\nauth_mechanisms.3 = EXTERNAL\n")


def pinned(cpu, argv):
    """argv run on one core (children inherit the affinity), or as is when cpu is None."""
    return argv if cpu is None else ["taskset", "-c", str(cpu)] + argv


def http_conf(mgmt_port, prom_port):
    """The rabbitmq.conf lines of the management API and Prometheus listeners."""
    return ("management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %d\n" % mgmt_port
            + "prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = %d\n" % prom_port)


class Lepus:
    name = "lepus"

    def __init__(self, cpu=None, send_timeout_ms=None, management=True):
        self.proc = None
        self.cpu = cpu
        self.send_timeout_ms = send_timeout_ms
        self.data = tempfile.mkdtemp(prefix="lepus-conformance-")
        # Lepus serves its management API by default; on free ports here, so that runs
        # never collide.
        self.management = management
        self.mgmt_port = free_port()
        self.prom_port = free_port()
        # More command-line arguments, from the next start on (benches/compare sets them).
        self.extra_args = []

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        build = subprocess.run(["cargo", "build", "--release", "--bin", "lepus", "--bin", "lepusctl"], cwd=ROOT)
        if build.returncode != 0:
            raise RuntimeError("cargo build failed")
        self.port = free_port()
        self.tls_port = free_port()
        self.conf = os.path.join(self.data, "lepus.conf")
        with open(self.conf, "w") as f:
            f.write(tls_conf(self.tls_port))
            f.write(http_conf(self.mgmt_port, self.prom_port))
        return self._spawn()

    def restart(self):
        """A clean stop and a start on the same port and data directory."""
        self._terminate()
        return self._spawn()

    def restart_node(self):
        self.restart()

    def _spawn(self):
        log = open(os.path.join(self.data, "lepus.log"), "a")
        self.proc = subprocess.Popen(
            pinned(self.cpu, [os.path.join(ROOT, "target", "release", "lepus"),
                              "--listen", "127.0.0.1:%d" % self.port, "--config", self.conf,
                              "--data-dir", os.path.join(self.data, "data")]
                             + (["--send-timeout-ms", str(self.send_timeout_ms)] if self.send_timeout_ms else [])
                             + self.extra_args),
            stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)
        wait_for_port(self.mgmt_port, self.proc)
        return "amqp://guest:guest@127.0.0.1:%d/%%2F" % self.port

    def ctl(self):
        """How to run this broker's rabbitmqctl: (argv prefix, extra environment)."""
        return [os.path.join(ROOT, "target", "release", "lepusctl"), "--data-dir",
                os.path.join(self.data, "data")], {}

    def _terminate(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self):
        self._terminate()
        shutil.rmtree(self.data, ignore_errors=True)


class RabbitMQ:
    """A private RabbitMQ node from Debian's rabbitmq-server package, on free ports."""
    name = "rabbitmq"

    def __init__(self, cpu=None, send_timeout_ms=None, management=False):
        self.base = tempfile.mkdtemp(prefix="rabbitmq-conformance-")
        # rabbitmq_management and rabbitmq_prometheus, for the management scenarios (off for
        # benchmarks, where Debian's default node has neither).
        self.management = management
        self.mgmt_port = free_port() if management else None
        self.prom_port = free_port() if management else None
        self.node = "lepusconf%d@localhost" % os.getpid()
        self.env = None
        self.cpu = cpu
        self.send_timeout_ms = send_timeout_ms

    @property
    def pid(self):
        """The node's beam.smp process (written by rabbitmq-server to its pid file)."""
        try:
            return int(open(os.path.join(self.base, "rabbitmq.pid")).read().strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def tool(name):
        # Debian's /usr/sbin wrappers switch to the rabbitmq user, who cannot write our
        # temporary directory; the scripts behind them run as whoever calls them.
        direct = os.path.join("/usr/lib/rabbitmq/bin", name)
        return direct if os.path.exists(direct) else name

    def start(self):
        if not shutil.which("rabbitmq-server"):
            raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self.port = free_port()
        plugins = os.path.join(self.base, "enabled_plugins")
        with open(plugins, "w") as f:
            extra = ",rabbitmq_management,rabbitmq_prometheus" if self.management else ""
            f.write("[rabbitmq_auth_mechanism_ssl%s].\n" % extra)
        self.tls_port = free_port()
        with open(os.path.join(self.base, "rabbitmq.conf"), "w") as f:
            f.write(tls_conf(self.tls_port, bind=""))
            if self.management:
                f.write(http_conf(self.mgmt_port, self.prom_port))
            if self.send_timeout_ms:
                f.write("tcp_listen_options.send_timeout = %d\n" % self.send_timeout_ms)
        self.env = dict(
            os.environ,
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_MNESIA_BASE=os.path.join(self.base, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.base, "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=plugins,
            RABBITMQ_CONFIG_FILE=os.path.join(self.base, "rabbitmq"),
            RABBITMQ_PID_FILE=os.path.join(self.base, "rabbitmq.pid"),
            HOME=self.base,
        )
        subprocess.run(pinned(self.cpu, [self.tool("rabbitmq-server"), "-detached"]), env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, timeout=120)
        if self.management:
            wait_for_port(self.mgmt_port, timeout=120)
            wait_for_port(self.prom_port, timeout=120)
        return "amqp://guest:guest@127.0.0.1:%d/%%2F" % self.port

    def ctl(self):
        """How to run this node's rabbitmqctl: (argv prefix, extra environment)."""
        return [self.tool("rabbitmqctl"), "-n", self.node], dict(self.env or {})

    def restart_node(self):
        """Stops the whole node (the Erlang VM) and starts it again on the same ports and
        data: a fresh process, as benches/compare wants before measuring memory."""
        # With the pid file, `stop` returns only once the VM has exited.
        subprocess.run([self.tool("rabbitmqctl"), "-n", self.node, "stop", os.path.join(self.base, "rabbitmq.pid")],
                       env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        subprocess.run(pinned(self.cpu, [self.tool("rabbitmq-server"), "-detached"]), env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, timeout=120)

    def restart(self):
        """Stops and starts the RabbitMQ application: its queues close their message stores
        and recover from disk, as after a restart of the node."""
        for action in ("stop_app", "start_app"):
            subprocess.run([self.tool("rabbitmqctl"), "-n", self.node, action], env=self.env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        wait_for_port(self.port, timeout=120)
        return "amqp://guest:guest@127.0.0.1:%d/%%2F" % self.port

    def stop(self):
        if self.env:
            subprocess.run([self.tool("rabbitmqctl"), "-n", self.node, "stop"], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)
