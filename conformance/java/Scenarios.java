// Conformance scenarios written with the RabbitMQ Java client (amqp-client), the way Java
// applications use RabbitMQ.
//
// Usage: scenarios --url amqp://guest:guest@127.0.0.1:5672/%2F --list
//        scenarios --url ... --run NAME
//
// Each scenario asserts what a user would observe from RabbitMQ and prints a JSON object of its
// observations (what was delivered, codes, texts) on the last line of stdout, so the runner can
// compare brokers. Exit status 0 means the scenario passed; on failure the reason goes to stderr.

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.AlreadyClosedException;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import com.rabbitmq.client.GetResponse;
import com.rabbitmq.client.Method;
import com.rabbitmq.client.ShutdownSignalException;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

public class Scenarios {
    /** How long any single wait for the broker may take. */
    static final long WAIT_S = 10;
    /** The whole scenario is abandoned after this long (the runner allows 120 s). */
    static final long SCENARIO_LIMIT_S = 90;

    interface Scenario {
        Map<String, Object> run(String url) throws Exception;
    }

    interface ChannelAction {
        void run(Channel ch) throws Exception;
    }

    static final Map<String, Scenario> SCENARIOS = new LinkedHashMap<>();

    static {
        SCENARIOS.put("handshake", Scenarios::handshake);
        SCENARIOS.put("work_queue", Scenarios::workQueue);
        SCENARIOS.put("pubsub_fanout", Scenarios::pubsubFanout);
        SCENARIOS.put("topic_pubsub", Scenarios::topicPubsub);
        SCENARIOS.put("headers_exchange", Scenarios::headersExchange);
        SCENARIOS.put("rpc", Scenarios::rpc);
        SCENARIOS.put("prefetch", Scenarios::prefetch);
        SCENARIOS.put("requeue_order", Scenarios::requeueOrder);
        SCENARIOS.put("mandatory_return", Scenarios::mandatoryReturn);
        SCENARIOS.put("confirms", Scenarios::confirms);
        SCENARIOS.put("transactions", Scenarios::transactions);
        SCENARIOS.put("large_messages", Scenarios::largeMessages);
        SCENARIOS.put("many_channels", Scenarios::manyChannels);
        SCENARIOS.put("errors", Scenarios::errors);
        SCENARIOS.put("exclusive_queue", Scenarios::exclusiveQueue);
        SCENARIOS.put("consumer_cancel_notify", Scenarios::consumerCancelNotify);
    }

    // ---------------------------------------------------------------- helpers

    static final SecureRandom RANDOM = new SecureRandom();

    static String unique(String prefix) {
        return String.format("%s-%08x", prefix, RANDOM.nextInt());
    }

    static Connection connect(String url) throws Exception {
        ConnectionFactory factory = new ConnectionFactory();
        factory.setUri(url);
        factory.setAutomaticRecoveryEnabled(false);
        factory.setTopologyRecoveryEnabled(false);
        factory.setRequestedHeartbeat(0);
        factory.setConnectionTimeout((int) TimeUnit.SECONDS.toMillis(WAIT_S));
        factory.setHandshakeTimeout((int) TimeUnit.SECONDS.toMillis(WAIT_S));
        factory.setShutdownTimeout((int) TimeUnit.SECONDS.toMillis(WAIT_S));
        return factory.newConnection();
    }

    static void check(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    static void checkEqual(Object expected, Object actual, String what) {
        if (expected == null ? actual != null : !expected.equals(actual)) {
            throw new AssertionError(what + ": expected " + toJson(expected) + " but got " + toJson(actual));
        }
    }

    /**
     * Polls until queue holds at least n messages. A publish on one channel and a method on
     * another are not ordered in RabbitMQ (each channel is its own process), so a scenario that
     * publishes on one and inspects on another waits for the message first.
     */
    static void waitEnqueued(Channel ch, String queue, int n) throws IOException, InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(WAIT_S);
        while (ch.queueDeclarePassive(queue).getMessageCount() < n) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError("timed out after " + WAIT_S + "s waiting for " + n + " messages in " + queue);
            }
            Thread.sleep(5);
        }
    }

    static void await(CountDownLatch latch, String what) throws InterruptedException {
        if (!latch.await(WAIT_S, TimeUnit.SECONDS)) {
            throw new AssertionError("timed out after " + WAIT_S + "s waiting for " + what);
        }
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String text(byte[] b) {
        return new String(b, StandardCharsets.UTF_8);
    }

    static List<Object> list(Object... items) {
        return new ArrayList<>(Arrays.asList(items));
    }

    static Map<String, Object> obj(Object... kv) {
        Map<String, Object> m = new TreeMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put((String) kv[i], kv[i + 1]);
        }
        return m;
    }

    /** Every ready message of a queue, got with auto-ack, as [body, redelivered] pairs. */
    static List<Object> drain(Channel ch, String queue) throws IOException {
        List<Object> out = new ArrayList<>();
        for (;;) {
            GetResponse r = ch.basicGet(queue, true);
            if (r == null) {
                return out;
            }
            out.add(list(text(r.getBody()), r.getEnvelope().isRedeliver()));
        }
    }

    static List<Object> drainBodies(Channel ch, String queue) throws IOException {
        List<Object> out = new ArrayList<>();
        for (Object pair : drain(ch, queue)) {
            out.add(((List<?>) pair).get(0));
        }
        return out;
    }

    /** How the broker closed a channel or connection. */
    static final class Closed {
        final int code;
        final String text;
        final boolean connectionLevel;

        Closed(int code, String text, boolean connectionLevel) {
            this.code = code;
            this.text = text;
            this.connectionLevel = connectionLevel;
        }

        List<Object> observed() {
            return list(code, text);
        }

        /** [code, text] with a generated name replaced by 'Q'. */
        List<Object> observed(String name) {
            return list(code, text.replace(name, "Q"));
        }

        @Override
        public String toString() {
            return (connectionLevel ? "connection.close " : "channel.close ") + code + " " + text;
        }
    }

    /**
     * Runs action on ch; it must make the broker close the channel (or the whole connection).
     * Methods without a reply (basic.ack, basic.publish) fail asynchronously, so a synchronous
     * method follows the action: the broker answers it only if it accepted the action.
     */
    static Closed closedByBroker(Channel ch, ChannelAction action) throws Exception {
        CompletableFuture<ShutdownSignalException> signal = new CompletableFuture<>();
        ch.addShutdownListener(signal::complete);
        boolean accepted = false;
        try {
            action.run(ch);
            ch.exchangeDeclarePassive("amq.direct");
            accepted = true;
        } catch (IOException | ShutdownSignalException e) {
            // Expected: the broker closed the channel or connection; the listener has the reason.
        }
        check(!accepted, "the broker accepted it");
        ShutdownSignalException s;
        try {
            s = signal.get(WAIT_S, TimeUnit.SECONDS);
        } catch (TimeoutException e) {
            throw new AssertionError("no close from the broker within " + WAIT_S + "s");
        }
        check(!s.isInitiatedByApplication(), "closed by the client, not the broker: " + s);
        Method reason = s.getReason();
        if (reason instanceof AMQP.Channel.Close) {
            AMQP.Channel.Close c = (AMQP.Channel.Close) reason;
            return new Closed(c.getReplyCode(), c.getReplyText(), false);
        }
        if (reason instanceof AMQP.Connection.Close) {
            AMQP.Connection.Close c = (AMQP.Connection.Close) reason;
            return new Closed(c.getReplyCode(), c.getReplyText(), true);
        }
        throw new AssertionError("closed without a close method: " + s, s);
    }

    static Closed channelClosed(Channel ch, ChannelAction action) throws Exception {
        Closed c = closedByBroker(ch, action);
        check(!c.connectionLevel, "expected a channel error, got " + c);
        check(ch.getConnection().isOpen(), "the connection survived the channel error");
        return c;
    }

    static Closed connectionClosed(Connection conn, ChannelAction action) throws Exception {
        Closed c = closedByBroker(conn.createChannel(), action);
        check(c.connectionLevel, "expected a connection error, got " + c);
        check(!conn.isOpen(), "the connection is closed");
        return c;
    }

    static void closeQuietly(Connection conn) {
        try {
            if (conn != null && conn.isOpen()) {
                conn.close((int) TimeUnit.SECONDS.toMillis(WAIT_S));
            }
        } catch (IOException | AlreadyClosedException e) {
            // already gone
        }
    }

    // ---------------------------------------------------------------- scenarios

    /** The capabilities every scenario may rely on (both brokers advertise them). */
    static final List<String> CAPABILITIES = Arrays.asList(
            "authentication_failure_close", "basic.nack", "consumer_cancel_notify",
            "consumer_priorities", "exchange_exchange_bindings", "per_consumer_qos",
            "publisher_confirms");

    /** The connection negotiates and the server advertises the capabilities clients use. */
    static Map<String, Object> handshake(String url) throws Exception {
        Connection conn = connect(url);
        Map<String, Object> props = conn.getServerProperties();
        Object capsObj = props.get("capabilities");
        check(capsObj instanceof Map, "server properties have a capabilities table: " + props);
        Map<?, ?> caps = (Map<?, ?>) capsObj;
        List<String> missing = new ArrayList<>();
        for (String c : CAPABILITIES) {
            if (!Boolean.TRUE.equals(caps.get(c))) {
                missing.add(c);
            }
        }
        check(missing.isEmpty(), "capabilities missing or not true: " + missing);
        for (String key : Arrays.asList("product", "version", "platform")) {
            check(props.containsKey(key), "server properties have " + key);
        }
        check(conn.getFrameMax() > 0 && conn.getFrameMax() <= 131072, "frame_max " + conn.getFrameMax());
        check(conn.getChannelMax() > 0, "channel_max " + conn.getChannelMax());
        conn.close();
        return obj("capabilities", new ArrayList<Object>(CAPABILITIES));
    }

    /** Two competing consumers with prefetch 1 share a durable work queue; every task is
     *  processed exactly once and acknowledged. */
    static Map<String, Object> workQueue(String url) throws Exception {
        String queue = unique("tasks");
        Connection producer = connect(url);
        Channel pch = producer.createChannel();
        pch.queueDeclare(queue, true, false, false, null);
        final int n = 40;
        CountDownLatch all = new CountDownLatch(n);
        Map<String, List<String>> done = new TreeMap<>();
        List<Connection> workers = new ArrayList<>();
        // Both workers subscribe (consume-ok received) before any task exists, so both get a share.
        for (String name : Arrays.asList("a", "b")) {
            List<String> mine = Collections.synchronizedList(new ArrayList<>());
            done.put(name, mine);
            Connection conn = connect(url);
            workers.add(conn);
            Channel ch = conn.createChannel();
            ch.basicQos(1);
            ch.basicConsume(queue, false, new DefaultConsumer(ch) {
                @Override
                public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body)
                        throws IOException {
                    try {
                        Thread.sleep(2); // the work
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                    }
                    mine.add(text(body));
                    getChannel().basicAck(env.getDeliveryTag(), false);
                    all.countDown();
                }
            });
        }
        AMQP.BasicProperties persistent = new AMQP.BasicProperties.Builder().deliveryMode(2).build();
        for (int i = 0; i < n; i++) {
            pch.basicPublish("", queue, persistent, bytes("task " + i));
        }
        await(all, "all tasks");
        for (Connection w : workers) {
            w.close();
        }
        List<String> processed = new ArrayList<>();
        processed.addAll(done.get("a"));
        processed.addAll(done.get("b"));
        processed.sort((x, y) -> Integer.compare(Integer.parseInt(x.split(" ")[1]), Integer.parseInt(y.split(" ")[1])));
        List<String> expected = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            expected.add("task " + i);
        }
        checkEqual(expected, processed, "every task processed exactly once");
        check(!done.get("a").isEmpty() && !done.get("b").isEmpty(), "both workers got work: " + done);
        int left = pch.queueDeclarePassive(queue).getMessageCount();
        checkEqual(0, left, "tasks left");
        pch.queueDelete(queue);
        producer.close();
        return obj("processed", processed.size(), "both_workers_busy", true, "left", left);
    }

    /** Every subscriber of a fanout exchange gets every message. */
    static Map<String, Object> pubsubFanout(String url) throws Exception {
        String exchange = unique("broadcast");
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        ch.exchangeDeclare(exchange, "fanout");
        List<String> queues = new ArrayList<>();
        for (int i = 0; i < 3; i++) {
            String q = ch.queueDeclare().getQueue();
            ch.queueBind(q, exchange, "");
            queues.add(q);
        }
        for (int i = 0; i < 5; i++) {
            ch.basicPublish(exchange, "ignored", null, bytes("news " + i));
        }
        List<Object> expected = new ArrayList<>();
        for (int i = 0; i < 5; i++) {
            expected.add("news " + i);
        }
        List<Object> got = new ArrayList<>();
        for (String q : queues) {
            List<Object> bodies = drainBodies(ch, q);
            checkEqual(expected, bodies, "subscriber " + got.size() + " got every message");
            got.add(bodies);
        }
        ch.exchangeDelete(exchange);
        conn.close();
        return obj("each_got", got.get(0), "subscribers", got.size());
    }

    /** Subscribers bind exclusive server-named queues to a topic exchange with wildcards. */
    static Map<String, Object> topicPubsub(String url) throws Exception {
        String exchange = unique("logs");
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        ch.exchangeDeclare(exchange, "topic");
        Map<String, String> patterns = new LinkedHashMap<>();
        patterns.put("all", "#");
        patterns.put("kern", "kern.*");
        patterns.put("critical", "*.critical");
        Map<String, String> queues = new LinkedHashMap<>();
        for (Map.Entry<String, String> p : patterns.entrySet()) {
            String q = ch.queueDeclare("", false, true, true, null).getQueue();
            check(q.startsWith("amq.gen-"), "server-named queue " + q);
            ch.queueBind(q, exchange, p.getValue());
            queues.put(p.getKey(), q);
        }
        List<Object> keys = list("kern.critical", "kern.info", "app.critical", "app.info.extra");
        for (Object k : keys) {
            ch.basicPublish(exchange, (String) k, null, bytes((String) k));
        }
        Map<String, Object> got = new TreeMap<>();
        for (Map.Entry<String, String> q : queues.entrySet()) {
            got.put(q.getKey(), drainBodies(ch, q.getValue()));
        }
        checkEqual(keys, got.get("all"), "'#' got");
        checkEqual(list("kern.critical", "kern.info"), got.get("kern"), "'kern.*' got");
        checkEqual(list("kern.critical", "app.critical"), got.get("critical"), "'*.critical' got");
        ch.exchangeDelete(exchange);
        conn.close();
        return got;
    }

    /** A headers exchange routes on x-match all / any. */
    static Map<String, Object> headersExchange(String url) throws Exception {
        String exchange = unique("hdrs");
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        ch.exchangeDeclare(exchange, "headers");
        String qAll = ch.queueDeclare().getQueue();
        String qAny = ch.queueDeclare().getQueue();
        Map<String, Object> all = new HashMap<>();
        all.put("x-match", "all");
        all.put("format", "pdf");
        all.put("type", "report");
        Map<String, Object> any = new HashMap<>(all);
        any.put("x-match", "any");
        ch.queueBind(qAll, exchange, "", all);
        ch.queueBind(qAny, exchange, "", any);
        Map<String, Object> both = new HashMap<>();
        both.put("format", "pdf");
        both.put("type", "report");
        Map<String, Object> format = new HashMap<>();
        format.put("format", "pdf");
        Map<String, Object> zip = new HashMap<>();
        zip.put("format", "zip");
        Object[][] messages = {{"both", both}, {"format", format}, {"neither", zip}, {"none", null}};
        for (Object[] m : messages) {
            @SuppressWarnings("unchecked")
            Map<String, Object> headers = (Map<String, Object>) m[1];
            AMQP.BasicProperties props = new AMQP.BasicProperties.Builder().headers(headers).build();
            ch.basicPublish(exchange, "", props, bytes((String) m[0]));
        }
        Map<String, Object> got = obj("all", drainBodies(ch, qAll), "any", drainBodies(ch, qAny));
        checkEqual(obj("all", list("both"), "any", list("both", "format")), got, "routed");
        ch.exchangeDelete(exchange);
        conn.close();
        return got;
    }

    /** A client sends requests with reply_to and correlation_id; a server answers each. */
    static Map<String, Object> rpc(String url) throws Exception {
        String queue = unique("rpc");
        Connection server = connect(url);
        Channel sch = server.createChannel();
        sch.queueDeclare(queue, false, false, false, null);
        sch.basicConsume(queue, false, new DefaultConsumer(sch) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body)
                    throws IOException {
                int n = Integer.parseInt(text(body));
                AMQP.BasicProperties reply = new AMQP.BasicProperties.Builder()
                        .correlationId(props.getCorrelationId()).build();
                getChannel().basicPublish("", props.getReplyTo(), reply, bytes(String.valueOf(n * n)));
                getChannel().basicAck(env.getDeliveryTag(), false);
            }
        });
        Connection client = connect(url);
        Channel cch = client.createChannel();
        String callbackQueue = cch.queueDeclare().getQueue();
        Map<String, String> responses = Collections.synchronizedMap(new HashMap<>());
        CountDownLatch answered = new CountDownLatch(5);
        cch.basicConsume(callbackQueue, true, new DefaultConsumer(cch) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                responses.put(props.getCorrelationId(), text(body));
                answered.countDown();
            }
        });
        Map<String, Integer> asked = new LinkedHashMap<>();
        for (int n = 1; n <= 5; n++) {
            String corr = UUID.randomUUID().toString();
            asked.put(corr, n);
            AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                    .replyTo(callbackQueue).correlationId(corr).build();
            cch.basicPublish("", queue, props, bytes(String.valueOf(n)));
        }
        await(answered, "all answers");
        List<Integer> answers = new ArrayList<>();
        for (Map.Entry<String, Integer> a : asked.entrySet()) {
            int n = a.getValue();
            checkEqual(String.valueOf(n * n), responses.get(a.getKey()), "answer to " + n);
            answers.add(Integer.parseInt(responses.get(a.getKey())));
        }
        Collections.sort(answers);
        checkEqual(Arrays.asList(1, 4, 9, 16, 25), answers, "answers");
        client.close();
        sch.queueDelete(queue);
        server.close();
        return obj("answers", new ArrayList<Object>(answers));
    }

    /** With prefetch 1 a consumer holding an unacked message gets nothing more; the next
     *  messages go to a consumer with room. */
    static Map<String, Object> prefetch(String url) throws Exception {
        String queue = unique("prefetch");
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        ch.queueDeclare(queue, false, false, false, null);
        Channel slow = conn.createChannel();
        slow.basicQos(1);
        Channel fast = conn.createChannel();
        List<Object> gotSlow = Collections.synchronizedList(new ArrayList<>());
        List<Object> gotFast = Collections.synchronizedList(new ArrayList<>());
        CountDownLatch six = new CountDownLatch(6);
        slow.basicConsume(queue, false, new DefaultConsumer(slow) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                gotSlow.add(text(body)); // never acked
                six.countDown();
            }
        });
        fast.basicConsume(queue, true, new DefaultConsumer(fast) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                gotFast.add(text(body));
                six.countDown();
            }
        });
        for (int i = 0; i < 6; i++) {
            ch.basicPublish("", queue, null, bytes("m" + i));
        }
        await(six, "six deliveries");
        // A round trip on the slow consumer's channel: anything else sent to it has arrived by now.
        slow.exchangeDeclarePassive("amq.direct");
        Map<String, Object> got = obj("slow", new ArrayList<>(gotSlow), "fast", new ArrayList<>(gotFast));
        checkEqual(obj("slow", list("m0"), "fast", list("m1", "m2", "m3", "m4", "m5")), got, "deliveries");
        ch.queueDelete(queue);
        conn.close();
        return got;
    }

    /** Rejected and nacked messages come back in their original position, redelivered. */
    static Map<String, Object> requeueOrder(String url) throws Exception {
        String queue = unique("requeue");
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        ch.queueDeclare(queue, false, false, false, null);
        for (int i = 0; i < 6; i++) {
            ch.basicPublish("", queue, null, bytes("m" + i));
        }
        long[] tags = new long[4];
        for (int i = 0; i < 4; i++) {
            GetResponse r = ch.basicGet(queue, false);
            check(r != null, "message " + i + " to get");
            checkEqual("m" + i, text(r.getBody()), "got in order");
            tags[i] = r.getEnvelope().getDeliveryTag();
        }
        ch.basicReject(tags[2], true);
        ch.basicNack(tags[0], false, true);
        ch.basicAck(tags[3], false);
        ch.basicReject(tags[1], false);
        List<Object> got = drain(ch, queue);
        checkEqual(list(list("m0", true), list("m2", true), list("m4", false), list("m5", false)), got, "order");
        ch.queueDelete(queue);
        conn.close();
        return obj("order", got);
    }

    /** An unroutable mandatory message comes back with 312 NO_ROUTE. */
    static Map<String, Object> mandatoryReturn(String url) throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        List<Object> returned = Collections.synchronizedList(new ArrayList<>());
        CountDownLatch two = new CountDownLatch(2);
        ch.addReturnListener((replyCode, replyText, exchange, routingKey, props, body) -> {
            returned.add(list(replyCode, replyText, exchange, text(body)));
            two.countDown();
        });
        ch.basicPublish("", unique("nobody"), true, null, bytes("lost"));
        ch.basicPublish("amq.direct", "no-binding", true, null, bytes("lost too"));
        await(two, "two returns");
        List<Object> got = new ArrayList<>(returned);
        checkEqual(list(list(312, "NO_ROUTE", "", "lost"), list(312, "NO_ROUTE", "amq.direct", "lost too")),
                got, "returns");
        conn.close();
        return obj("returned", got);
    }

    /** Publisher confirms: every publish is acked; an unroutable mandatory one is returned
     *  and still acked. */
    static Map<String, Object> confirms(String url) throws Exception {
        String queue = unique("confirm");
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        ch.queueDeclare(queue, false, false, false, null);
        ch.confirmSelect();
        for (int i = 0; i < 100; i++) {
            ch.basicPublish("", queue, null, bytes("c" + i));
        }
        ch.waitForConfirmsOrDie(TimeUnit.SECONDS.toMillis(WAIT_S));
        CountDownLatch returned = new CountDownLatch(1);
        List<Object> returns = Collections.synchronizedList(new ArrayList<>());
        ch.addReturnListener((replyCode, replyText, exchange, routingKey, props, body) -> {
            returns.add(list(replyCode, replyText));
            returned.countDown();
        });
        long seq = ch.getNextPublishSeqNo();
        checkEqual(101L, seq, "next publish sequence number");
        ch.basicPublish("", unique("nowhere"), true, null, bytes("x"));
        ch.waitForConfirmsOrDie(TimeUnit.SECONDS.toMillis(WAIT_S)); // acked, not nacked
        await(returned, "the return");
        checkEqual(list(list(312, "NO_ROUTE")), new ArrayList<>(returns), "returns");
        int count = ch.queueDeclarePassive(queue).getMessageCount();
        checkEqual(100, count, "messages in the queue");
        ch.queueDelete(queue);
        conn.close();
        return obj("confirmed", 100, "returned", returns.size(), "queued", count);
    }

    /** Publishes and acks in a transaction take effect on commit, vanish on rollback. */
    static Map<String, Object> transactions(String url) throws Exception {
        String queue = unique("tx");
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        ch.queueDeclare(queue, false, false, false, null);
        ch.txSelect();
        ch.basicPublish("", queue, null, bytes("a"));
        ch.basicPublish("", queue, null, bytes("b"));
        int before = ch.queueDeclarePassive(queue).getMessageCount();
        ch.txCommit();
        int after = ch.queueDeclarePassive(queue).getMessageCount();
        ch.basicPublish("", queue, null, bytes("c"));
        ch.txRollback();
        GetResponse r = ch.basicGet(queue, false);
        check(r != null, "a committed message to get");
        checkEqual("a", text(r.getBody()), "first committed message");
        ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
        ch.txRollback();
        ch.basicAck(r.getEnvelope().getDeliveryTag(), false); // still unacked after the rollback
        ch.txCommit();
        int left = ch.queueDeclarePassive(queue).getMessageCount();
        checkEqual(list(0, 2, 1), list(before, after, left), "(before commit, after commit, after ack)");
        Map<String, Object> errors = new TreeMap<>();
        Closed c = channelClosed(conn.createChannel(), Channel::txCommit);
        checkEqual(list(406, "PRECONDITION_FAILED - channel is not transactional"), c.observed(),
                "tx.commit without tx.select");
        errors.put("commit_without_select", c.observed());
        c = channelClosed(conn.createChannel(), Channel::txRollback);
        checkEqual(list(406, "PRECONDITION_FAILED - channel is not transactional"), c.observed(),
                "tx.rollback without tx.select");
        errors.put("rollback_without_select", c.observed());
        ch.queueDelete(queue);
        conn.close();
        return obj("before_commit", before, "after_commit", after, "after_ack", left, "errors", errors);
    }

    /** Bodies larger than a frame arrive intact, and so do empty ones. */
    static Map<String, Object> largeMessages(String url) throws Exception {
        String queue = unique("large");
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        ch.queueDeclare(queue, false, false, false, null);
        byte[] big = new byte[5 * 1024 * 1024];
        for (int i = 0; i < big.length; i++) {
            big[i] = (byte) i;
        }
        ch.basicPublish("", queue, null, big);
        ch.basicPublish("", queue, null, new byte[0]);
        GetResponse r1 = ch.basicGet(queue, true);
        GetResponse r2 = ch.basicGet(queue, true);
        check(r1 != null && r2 != null, "both messages to get");
        byte[] body1 = r1.getBody();
        byte[] body2 = r2.getBody() == null ? new byte[0] : r2.getBody();
        check(Arrays.equals(big, body1), "the 5 MiB body intact (got " + body1.length + " bytes)");
        checkEqual(0, body2.length, "empty body length");
        checkEqual(0, r2.getMessageCount(), "message count after the last get");
        ch.queueDelete(queue);
        conn.close();
        return obj("sizes", list(body1.length, body2.length));
    }

    /** Many channels on one connection work independently; an error on one closes only it. */
    static Map<String, Object> manyChannels(String url) throws Exception {
        final int n = 200;
        Connection conn = connect(url);
        List<Channel> channels = new ArrayList<>();
        List<String> queues = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            Channel ch = conn.createChannel();
            check(ch != null, "channel " + i + " opened");
            channels.add(ch);
        }
        int roundTrips = 0;
        for (int i = 0; i < n; i++) {
            Channel ch = channels.get(i);
            String q = ch.queueDeclare().getQueue();
            queues.add(q);
            ch.basicPublish("", q, null, bytes("on channel " + i));
            GetResponse r = ch.basicGet(q, true);
            check(r != null, "message back on channel " + i);
            checkEqual("on channel " + i, text(r.getBody()), "body on channel " + i);
            roundTrips++;
        }
        String missing = unique("missing");
        int broken = n / 2;
        Closed c = channelClosed(channels.get(broken), ch -> ch.queueDeclarePassive(missing));
        checkEqual(list(404, "NOT_FOUND - no queue '" + missing + "' in vhost '/'"), c.observed(), "the error");
        check(!channels.get(broken).isOpen(), "the failed channel is closed");
        int usable = 0;
        for (int i = 0; i < n; i++) {
            if (i == broken) {
                continue;
            }
            Channel ch = channels.get(i);
            check(ch.isOpen(), "channel " + i + " still open");
            ch.basicPublish("", queues.get(i), null, bytes("again " + i));
            GetResponse r = ch.basicGet(queues.get(i), true);
            check(r != null, "message back on channel " + i + " after the error");
            checkEqual("again " + i, text(r.getBody()), "body on channel " + i + " after the error");
            usable++;
        }
        // The failed channel's queue belongs to the connection and is still there.
        Channel fresh = conn.createChannel();
        int leftOnBroken = fresh.queueDeclarePassive(queues.get(broken)).getMessageCount();
        conn.close();
        return obj("channels", n, "round_trips", roundTrips, "error", c.observed(missing),
                "usable_after_error", usable, "left_on_failed_channel_queue", leftOnBroken);
    }

    /** Channel and connection errors carry RabbitMQ's codes and texts. */
    static Map<String, Object> errors(String url) throws Exception {
        Map<String, Object> observed = new TreeMap<>();
        Connection conn = connect(url);
        String missing = unique("does-not-exist");
        Closed c = channelClosed(conn.createChannel(), ch -> ch.queueDeclarePassive(missing));
        checkEqual(list(404, "NOT_FOUND - no queue '" + missing + "' in vhost '/'"), c.observed(), "passive missing");
        observed.put("passive_missing", c.observed(missing));

        String q = unique("ttl");
        Channel setup = conn.createChannel();
        setup.queueDeclare(q, false, false, false, Collections.singletonMap("x-message-ttl", 1000));
        c = channelClosed(conn.createChannel(),
                ch -> ch.queueDeclare(q, false, false, false, Collections.singletonMap("x-message-ttl", 2000)));
        checkEqual(list(406, "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '" + q
                + "' in vhost '/': received '2000' but current is '1000'"), c.observed(), "inequivalent");
        observed.put("inequivalent", c.observed(q));

        c = channelClosed(conn.createChannel(), ch -> ch.exchangeDeclare("amq.mine", "direct"));
        checkEqual(list(403, "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'"),
                c.observed(), "reserved");
        observed.put("reserved", c.observed());

        setup.exchangeDeclare(q + "-x", "direct");
        setup.queueDeclare(q + "-q", false, false, false, null);
        setup.queueBind(q + "-q", q + "-x", "k");
        c = channelClosed(conn.createChannel(), ch -> ch.exchangeDelete(q + "-x", true));
        checkEqual(list(406, "PRECONDITION_FAILED - exchange '" + q + "-x' in vhost '/' in use"), c.observed(),
                "exchange in use");
        observed.put("exchange_in_use", c.observed(q));

        setup.basicPublish("", q + "-q", null, bytes("x"));
        waitEnqueued(setup, q + "-q", 1);
        c = channelClosed(conn.createChannel(), ch -> ch.queueDelete(q + "-q", false, true));
        checkEqual(list(406, "PRECONDITION_FAILED - queue '" + q + "-q' in vhost '/' not empty"), c.observed(),
                "queue not empty");
        observed.put("queue_not_empty", c.observed(q));

        c = channelClosed(conn.createChannel(), ch -> ch.exchangeDeclare(q + "-x", "fanout"));
        checkEqual(list(406, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '" + q
                + "-x' in vhost '/': received 'fanout' but current is 'direct'"), c.observed(), "exchange inequivalent");
        observed.put("exchange_inequivalent", c.observed(q));

        c = channelClosed(conn.createChannel(),
                ch -> ch.basicPublish("no-such-exchange-here", "k", null, bytes("x")));
        checkEqual(list(404, "NOT_FOUND - no exchange 'no-such-exchange-here' in vhost '/'"), c.observed(),
                "publish to a missing exchange");
        observed.put("publish_missing_exchange", c.observed());

        c = channelClosed(conn.createChannel(), ch -> ch.basicAck(42, false));
        checkEqual(list(406, "PRECONDITION_FAILED - unknown delivery tag 42"), c.observed(), "unknown delivery tag");
        observed.put("unknown_tag", c.observed());

        setup.exchangeDelete(q + "-x");
        setup.queueDelete(q + "-q");
        setup.queueDelete(q);
        conn.close();

        // Connection-level errors: each takes the whole connection down.
        conn = connect(url);
        Connection tagConn = conn;
        String exclusive = conn.createChannel().queueDeclare().getQueue();
        c = connectionClosed(conn, ch -> {
            ch.basicConsume(exclusive, true, "dup", new DefaultConsumer(ch));
            ch.basicConsume(exclusive, true, "dup", new DefaultConsumer(ch));
        });
        checkEqual(list(530, "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"), c.observed(), "reused consumer tag");
        observed.put("consumer_tag_reused", c.observed());
        check(!tagConn.isOpen(), "closed");

        conn = connect(url);
        c = connectionClosed(conn, ch -> ch.basicQos(10, 0, false));
        checkEqual(list(540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)"), c.observed(), "prefetch_size");
        observed.put("prefetch_size", c.observed());

        conn = connect(url);
        c = connectionClosed(conn, ch -> ch.basicPublish("", unique("anywhere"), false, true, null, bytes("x")));
        checkEqual(list(540, "NOT_IMPLEMENTED - immediate=true"), c.observed(), "immediate");
        observed.put("immediate", c.observed());

        conn = connect(url);
        c = connectionClosed(conn, ch -> ch.basicRecover(false));
        checkEqual(list(540, "NOT_IMPLEMENTED - requeue=false"), c.observed(), "basic.recover requeue=false");
        observed.put("recover_without_requeue", c.observed());

        return observed;
    }

    /** An exclusive queue is locked to its connection and deleted with it. */
    static Map<String, Object> exclusiveQueue(String url) throws Exception {
        Connection owner = connect(url);
        Channel och = owner.createChannel();
        String queue = unique("mine");
        och.queueDeclare(queue, false, true, false, null);
        Connection other = connect(url);
        Closed locked = channelClosed(other.createChannel(), ch -> ch.queueDeclarePassive(queue));
        String expected = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '" + queue
                + "' in vhost '/'. It could be originally declared on another connection or the exclusive"
                + " property value does not match that of the original declaration.";
        checkEqual(list(405, expected), locked.observed(), "locked");
        // The owner still uses it.
        och.basicPublish("", queue, null, bytes("mine"));
        GetResponse r = och.basicGet(queue, true);
        check(r != null && "mine".equals(text(r.getBody())), "the owner uses its queue");
        owner.close();
        Closed gone = channelClosed(other.createChannel(), ch -> ch.queueDeclarePassive(queue));
        checkEqual(list(404, "NOT_FOUND - no queue '" + queue + "' in vhost '/'"), gone.observed(), "after close");
        other.close();
        return obj("locked", locked.observed(queue), "after_close", gone.observed(queue));
    }

    /** Deleting a queue under a consumer tells the consumer (basic.cancel from the broker). */
    static Map<String, Object> consumerCancelNotify(String url) throws Exception {
        String queue = unique("doomed");
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        ch.queueDeclare(queue, false, false, false, null);
        List<Object> cancelled = Collections.synchronizedList(new ArrayList<>());
        CountDownLatch cancel = new CountDownLatch(1);
        String tag = ch.basicConsume(queue, true, "watcher", new DefaultConsumer(ch) {
            @Override
            public void handleCancel(String consumerTag) {
                cancelled.add(consumerTag);
                cancel.countDown();
            }
        });
        checkEqual("watcher", tag, "consumer tag");
        Channel other = conn.createChannel();
        int deleted = other.queueDelete(queue).getMessageCount();
        await(cancel, "basic.cancel from the broker");
        checkEqual(list("watcher"), new ArrayList<>(cancelled), "cancelled");
        check(ch.isOpen(), "the consumer's channel stays open");
        ch.exchangeDeclarePassive("amq.direct");
        conn.close();
        return obj("cancelled", new ArrayList<>(cancelled), "deleted_messages", deleted);
    }

    // ---------------------------------------------------------------- JSON

    static String toJson(Object v) {
        StringBuilder sb = new StringBuilder();
        writeJson(sb, v);
        return sb.toString();
    }

    static void writeJson(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof Boolean || v instanceof Integer || v instanceof Long || v instanceof Short) {
            sb.append(v);
        } else if (v instanceof Number) {
            sb.append(((Number) v).doubleValue());
        } else if (v instanceof Map) {
            Map<String, Object> sorted = new TreeMap<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                sorted.put(String.valueOf(e.getKey()), e.getValue());
            }
            sb.append('{');
            boolean first = true;
            for (Map.Entry<String, Object> e : sorted.entrySet()) {
                if (!first) {
                    sb.append(", ");
                }
                first = false;
                writeString(sb, e.getKey());
                sb.append(": ");
                writeJson(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof List) {
            sb.append('[');
            boolean first = true;
            for (Object item : (List<?>) v) {
                if (!first) {
                    sb.append(", ");
                }
                first = false;
                writeJson(sb, item);
            }
            sb.append(']');
        } else {
            writeString(sb, v.toString());
        }
    }

    static void writeString(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (c < 0x20 || c > 0x7e) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
            }
        }
        sb.append('"');
    }

    // ---------------------------------------------------------------- main

    static void usage() {
        System.err.println("usage: scenarios --url URL (--list | --run NAME)");
        System.exit(2);
    }

    public static void main(String[] args) {
        String url = null;
        String run = null;
        boolean listOnly = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--url":
                    if (++i >= args.length) usage();
                    url = args[i];
                    break;
                case "--run":
                    if (++i >= args.length) usage();
                    run = args[i];
                    break;
                case "--list":
                    listOnly = true;
                    break;
                default:
                    usage();
            }
        }
        if (listOnly) {
            for (String name : SCENARIOS.keySet()) {
                System.out.println(name);
            }
            System.exit(0);
        }
        if (url == null || run == null) {
            usage();
        }
        final String name = run;
        Scenario scenario = SCENARIOS.get(name);
        if (scenario == null) {
            System.err.println("Error: unknown scenario " + run);
            System.exit(2);
        }
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(TimeUnit.SECONDS.toMillis(SCENARIO_LIMIT_S));
                System.err.println("Error: scenario " + name + " did not finish within " + SCENARIO_LIMIT_S + "s");
                Runtime.getRuntime().halt(3);
            } catch (InterruptedException e) {
                // finished in time
            }
        });
        watchdog.setDaemon(true);
        watchdog.start();
        try {
            Map<String, Object> observed = scenario.run(url);
            System.out.println(toJson(observed));
            System.out.flush();
            System.exit(0);
        } catch (Throwable t) {
            t.printStackTrace();
            String reason = t instanceof AssertionError ? "AssertionError: " + t.getMessage()
                    : "Error: " + t;
            System.err.println(reason);
            System.err.flush();
            System.exit(1);
        }
    }
}
