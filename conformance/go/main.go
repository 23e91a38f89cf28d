// Conformance scenarios written with amqp091-go, the way Go applications use RabbitMQ.
//
// Usage:
//
//	scenarios --url amqp://guest:guest@127.0.0.1:5672/%2F --list
//	scenarios --url ... --run NAME
//
// Each scenario asserts what a user would observe from RabbitMQ and prints a JSON object of
// its observations (what was delivered, codes, texts) as the last line of stdout, so the
// runner can compare brokers. Exit status 0 means the scenario passed; on failure the reason
// goes to stderr and the exit status is 1.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// wait bounds every wait for an event from the broker.
const wait = 10 * time.Second

// obs is what a scenario observed; encoding/json prints map keys sorted.
type obs map[string]interface{}

type scenarioFn func(url string) obs

var scenarioOrder = []string{
	"handshake", "work_queue", "pubsub_fanout", "topic_pubsub", "headers_exchange", "rpc",
	"prefetch", "requeue_order", "mandatory_return", "confirms", "transactions",
	"large_messages", "many_channels", "errors", "exclusive_queue", "consumer_cancel_notify",
}

var scenarios = map[string]scenarioFn{
	"handshake":              handshake,
	"work_queue":             workQueue,
	"pubsub_fanout":          pubsubFanout,
	"topic_pubsub":           topicPubsub,
	"headers_exchange":       headersExchange,
	"rpc":                    rpc,
	"prefetch":               prefetch,
	"requeue_order":          requeueOrder,
	"mandatory_return":       mandatoryReturn,
	"confirms":               confirms,
	"transactions":           transactions,
	"large_messages":         largeMessages,
	"many_channels":          manyChannels,
	"errors":                 errorsScenario,
	"exclusive_queue":        exclusiveQueue,
	"consumer_cancel_notify": consumerCancelNotify,
}

// ---------------------------------------------------------------------------------------
// Helpers

// failure is raised (panicked) by the assertion helpers and reported by main.
type failure struct{ msg string }

func failf(format string, args ...interface{}) {
	panic(failure{fmt.Sprintf(format, args...)})
}

// must fails the scenario if err is not nil.
func must(err error, what string) {
	if err != nil {
		failf("%s: %v", what, err)
	}
}

// expect fails the scenario unless got deep-equals want.
func expect(what string, got, want interface{}) {
	if !reflect.DeepEqual(got, want) {
		failf("%s: got %#v, want %#v", what, got, want)
	}
}

func unique(prefix string) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		failf("random: %v", err)
	}
	return prefix + "-" + hex.EncodeToString(b)
}

func dial(url string) *amqp.Connection {
	conn, err := amqp.Dial(url)
	must(err, "connect")
	return conn
}

func channel(conn *amqp.Connection) *amqp.Channel {
	ch, err := conn.Channel()
	must(err, "channel.open")
	return ch
}

func declareQueue(ch *amqp.Channel, name string) amqp.Queue {
	q, err := ch.QueueDeclare(name, false, false, false, false, nil)
	must(err, "queue.declare "+name)
	return q
}

// declareServerNamed declares an exclusive queue with a server-generated name.
func declareServerNamed(ch *amqp.Channel) string {
	q, err := ch.QueueDeclare("", false, false, true, false, nil)
	must(err, "queue.declare ''")
	if !strings.HasPrefix(q.Name, "amq.gen-") {
		failf("server-named queue %q does not start with amq.gen-", q.Name)
	}
	return q.Name
}

func publish(ch *amqp.Channel, exchange, key string, body string) {
	must(ch.Publish(exchange, key, false, false, amqp.Publishing{Body: []byte(body)}),
		"basic.publish")
}

func messageCount(ch *amqp.Channel, queue string) int {
	q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
	must(err, "passive queue.declare "+queue)
	return q.Messages
}

// waitEnqueued polls until queue holds at least n messages. A publish on one channel and a
// method on another are not ordered in RabbitMQ (each channel is its own process), so a
// scenario that publishes on one and inspects on another waits for the message first.
func waitEnqueued(ch *amqp.Channel, queue string, n int) {
	deadline := time.Now().Add(wait)
	for messageCount(ch, queue) < n {
		if time.Now().After(deadline) {
			failf("%s: fewer than %d messages after %s", queue, n, wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// drain gets every ready message with auto-ack and returns the bodies.
func drain(ch *amqp.Channel, queue string) []string {
	out := []string{}
	for {
		d, ok, err := ch.Get(queue, true)
		must(err, "basic.get")
		if !ok {
			return out
		}
		out = append(out, string(d.Body))
	}
}

func asAMQPError(err error) *amqp.Error {
	var e *amqp.Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// channelError runs action on a fresh channel of conn; the broker must close that channel
// (and only it). Returns [code, text]. The error is taken from the action's result when the
// method is synchronous, otherwise from the channel's close notification.
func channelError(conn *amqp.Connection, what string, action func(ch *amqp.Channel) error) []interface{} {
	ch := channel(conn)
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	e := asAMQPError(action(ch))
	if e == nil {
		select {
		case e = <-closed:
		case <-time.After(wait):
			failf("%s: the broker accepted it (no channel.close within %s)", what, wait)
		}
	}
	if e == nil {
		failf("%s: channel closed without an error", what)
	}
	if !e.Server {
		failf("%s: error raised by the client, not the broker: %v", what, e)
	}
	if conn.IsClosed() {
		failf("%s: expected a channel error, but the connection was closed: %v", what, e)
	}
	if !ch.IsClosed() {
		failf("%s: channel still open after %v", what, e)
	}
	return []interface{}{e.Code, e.Reason}
}

// connectionError opens a fresh connection and runs action on a channel of it; the broker
// must close the whole connection. Returns [code, text].
func connectionError(url, what string, action func(ch *amqp.Channel) error) []interface{} {
	conn := dial(url)
	defer conn.Close()
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	ch := channel(conn)
	err := action(ch)
	var e *amqp.Error
	select {
	case e = <-closed:
	case <-time.After(wait):
		failf("%s: the broker did not close the connection within %s (action returned %v)", what, wait, err)
	}
	if e == nil {
		failf("%s: connection closed without an error", what)
	}
	if !e.Server {
		failf("%s: error raised by the client, not the broker: %v", what, e)
	}
	if ae := asAMQPError(err); err != nil && (ae == nil || ae.Code != e.Code || ae.Reason != e.Reason) {
		failf("%s: the call returned %v but the connection closed with %v", what, err, e)
	}
	return []interface{}{e.Code, e.Reason}
}

// replaceName hides a generated name in a [code, text] observation.
func replaceName(codeText []interface{}, name string) []interface{} {
	return []interface{}{codeText[0], strings.ReplaceAll(codeText[1].(string), name, "Q")}
}

// receive waits for one delivery.
func receive(deliveries <-chan amqp.Delivery, what string) amqp.Delivery {
	select {
	case d, ok := <-deliveries:
		if !ok {
			failf("%s: consumer closed", what)
		}
		return d
	case <-time.After(wait):
		failf("%s: nothing delivered within %s", what, wait)
	}
	panic("unreachable")
}

// ---------------------------------------------------------------------------------------
// Scenarios

// The capabilities every scenario may rely on (both brokers advertise them).
var capabilities = []string{"authentication_failure_close", "basic.nack", "consumer_cancel_notify",
	"consumer_priorities", "exchange_exchange_bindings", "per_consumer_qos", "publisher_confirms"}

// The connection negotiates and the server advertises the capabilities clients use; a wrong
// password is refused.
func handshake(url string) obs {
	conn := dial(url)
	defer conn.Close()
	expect("protocol version", []int{conn.Major, conn.Minor}, []int{0, 9})
	caps, ok := conn.Properties["capabilities"].(amqp.Table)
	if !ok {
		failf("server properties have no capabilities table: %#v", conn.Properties)
	}
	var missing []string
	for _, c := range capabilities {
		if v, ok := caps[c].(bool); !ok || !v {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		failf("capabilities not advertised as true: %v", missing)
	}
	for _, key := range []string{"product", "version", "platform"} {
		if _, ok := conn.Properties[key]; !ok {
			failf("server property %q missing", key)
		}
	}
	if conn.Config.FrameSize <= 0 || conn.Config.FrameSize > 131072 {
		failf("negotiated frame_max %d", conn.Config.FrameSize)
	}
	if conn.Config.ChannelMax <= 0 {
		failf("negotiated channel_max %d", conn.Config.ChannelMax)
	}

	// A wrong password: the Go client reports ErrCredentials when the broker refuses.
	bad, err := amqp.Dial(strings.Replace(url, "guest:guest@", "guest:wrong-password@", 1))
	if err == nil {
		bad.Close()
		failf("a wrong password was accepted")
	}
	if err != amqp.ErrCredentials {
		failf("wrong password: got %v, want amqp.ErrCredentials", err)
	}
	return obs{"capabilities": capabilities, "version": []int{conn.Major, conn.Minor},
		"wrong_password": []interface{}{amqp.ErrCredentials.Code, amqp.ErrCredentials.Reason}}
}

// Two competing consumers with prefetch 1, each on its own connection, share a durable work
// queue; both subscribe before any task exists; every task is processed exactly once.
func workQueue(url string) obs {
	queue := unique("tasks")
	producer := dial(url)
	defer producer.Close()
	pch := channel(producer)
	_, err := pch.QueueDeclare(queue, true, false, false, false, nil)
	must(err, "queue.declare")
	defer pch.QueueDelete(queue, false, false, false)

	const n = 40
	var mu sync.Mutex
	done := map[string][]string{"a": {}, "b": {}}
	total := 0
	allDone := make(chan struct{})
	var workers []*amqp.Connection
	var stopped sync.WaitGroup
	for _, name := range []string{"a", "b"} {
		conn := dial(url)
		workers = append(workers, conn)
		ch := channel(conn)
		must(ch.Qos(1, 0, false), "basic.qos")
		deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
		must(err, "basic.consume")
		name := name
		stopped.Add(1)
		go func() {
			defer stopped.Done()
			for d := range deliveries {
				// Acknowledge before counting, so that every task is acked once all are counted.
				if err := d.Ack(false); err != nil {
					return
				}
				mu.Lock()
				done[name] = append(done[name], string(d.Body))
				total++
				if total == n {
					close(allDone)
				}
				mu.Unlock()
			}
		}()
	}
	// Consume returned after consume-ok: both workers are subscribed.
	for i := 0; i < n; i++ {
		must(pch.Publish("", queue, false, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, Body: []byte(fmt.Sprintf("task %d", i))}), "basic.publish")
	}
	select {
	case <-allDone:
	case <-time.After(wait):
		mu.Lock()
		failf("only %d of %d tasks processed within %s", total, n, wait)
	}
	for _, w := range workers {
		must(w.Close(), "close worker connection")
	}
	stopped.Wait()
	processed := append(append([]string{}, done["a"]...), done["b"]...)
	num := func(s string) int { v, _ := strconv.Atoi(strings.Fields(s)[1]); return v }
	sort.Slice(processed, func(i, j int) bool { return num(processed[i]) < num(processed[j]) })
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("task %d", i)
	}
	expect("processed tasks", processed, want)
	if len(done["a"]) == 0 || len(done["b"]) == 0 {
		failf("both workers should get work: a=%d b=%d", len(done["a"]), len(done["b"]))
	}
	left := messageCount(pch, queue)
	expect("tasks left", left, 0)
	_, err = pch.QueueDelete(queue, false, false, false)
	must(err, "queue.delete")
	return obs{"processed": len(processed), "both_workers_busy": true, "left": left}
}

// Every subscriber of a fanout exchange gets every message.
func pubsubFanout(url string) obs {
	exchange := unique("broadcast")
	conn := dial(url)
	defer conn.Close()
	ch := channel(conn)
	must(ch.ExchangeDeclare(exchange, "fanout", false, false, false, false, nil), "exchange.declare")
	var queues []string
	for i := 0; i < 3; i++ {
		q := declareServerNamed(ch)
		must(ch.QueueBind(q, "", exchange, false, nil), "queue.bind")
		queues = append(queues, q)
	}
	want := []string{}
	for i := 0; i < 5; i++ {
		publish(ch, exchange, "ignored", fmt.Sprintf("news %d", i))
		want = append(want, fmt.Sprintf("news %d", i))
	}
	var got [][]string
	for _, q := range queues {
		got = append(got, drain(ch, q))
	}
	for i, g := range got {
		expect(fmt.Sprintf("subscriber %d", i), g, want)
	}
	must(ch.ExchangeDelete(exchange, false, false), "exchange.delete")
	return obs{"each_got": got[0], "subscribers": len(got)}
}

// Subscribers bind exclusive server-named queues to a topic exchange with wildcards.
func topicPubsub(url string) obs {
	exchange := unique("logs")
	conn := dial(url)
	defer conn.Close()
	ch := channel(conn)
	must(ch.ExchangeDeclare(exchange, "topic", false, false, false, false, nil), "exchange.declare")
	names := []string{"all", "kern", "critical"}
	patterns := map[string]string{"all": "#", "kern": "kern.*", "critical": "*.critical"}
	queues := map[string]string{}
	for _, name := range names {
		q := declareServerNamed(ch)
		must(ch.QueueBind(q, patterns[name], exchange, false, nil), "queue.bind")
		queues[name] = q
	}
	keys := []string{"kern.critical", "kern.info", "app.critical", "app.info.extra"}
	for _, k := range keys {
		publish(ch, exchange, k, k)
	}
	got := obs{}
	for _, name := range names {
		got[name] = drain(ch, queues[name])
	}
	expect("all", got["all"], keys)
	expect("kern", got["kern"], []string{"kern.critical", "kern.info"})
	expect("critical", got["critical"], []string{"kern.critical", "app.critical"})
	must(ch.ExchangeDelete(exchange, false, false), "exchange.delete")
	return got
}

// A headers exchange routes on x-match all / any.
func headersExchange(url string) obs {
	exchange := unique("hdrs")
	conn := dial(url)
	defer conn.Close()
	ch := channel(conn)
	must(ch.ExchangeDeclare(exchange, "headers", false, false, false, false, nil), "exchange.declare")
	qAll := declareServerNamed(ch)
	qAny := declareServerNamed(ch)
	must(ch.QueueBind(qAll, "", exchange, false,
		amqp.Table{"x-match": "all", "format": "pdf", "type": "report"}), "queue.bind all")
	must(ch.QueueBind(qAny, "", exchange, false,
		amqp.Table{"x-match": "any", "format": "pdf", "type": "report"}), "queue.bind any")
	messages := []struct {
		name    string
		headers amqp.Table
	}{
		{"both", amqp.Table{"format": "pdf", "type": "report"}},
		{"format", amqp.Table{"format": "pdf"}},
		{"neither", amqp.Table{"format": "zip"}},
		{"none", nil},
	}
	for _, m := range messages {
		must(ch.Publish(exchange, "", false, false, amqp.Publishing{Headers: m.headers, Body: []byte(m.name)}),
			"basic.publish")
	}
	got := obs{"all": drain(ch, qAll), "any": drain(ch, qAny)}
	expect("x-match all", got["all"], []string{"both"})
	expect("x-match any", got["any"], []string{"both", "format"})
	must(ch.ExchangeDelete(exchange, false, false), "exchange.delete")
	return got
}

// A client sends requests with reply_to and correlation_id; a server answers each.
func rpc(url string) obs {
	queue := unique("rpc")
	server := dial(url)
	defer server.Close()
	sch := channel(server)
	declareQueue(sch, queue)
	requests, err := sch.Consume(queue, "", false, false, false, false, nil)
	must(err, "basic.consume (server)")
	serverDone := make(chan struct{})
	go func() {
		defer close(serverDone)
		for d := range requests {
			n, _ := strconv.Atoi(string(d.Body))
			if err := sch.Publish("", d.ReplyTo, false, false, amqp.Publishing{
				CorrelationId: d.CorrelationId, Body: []byte(strconv.Itoa(n * n))}); err != nil {
				return
			}
			if err := d.Ack(false); err != nil {
				return
			}
		}
	}()

	client := dial(url)
	defer client.Close()
	cch := channel(client)
	callback := declareServerNamed(cch)
	replies, err := cch.Consume(callback, "", true, false, false, false, nil)
	must(err, "basic.consume (client)")
	asked := map[string]int{}
	for n := 1; n <= 5; n++ {
		corr := unique("corr")
		asked[corr] = n
		must(cch.Publish("", queue, false, false, amqp.Publishing{
			ReplyTo: callback, CorrelationId: corr, Body: []byte(strconv.Itoa(n))}), "basic.publish")
	}
	responses := map[string]string{}
	for len(responses) < len(asked) {
		d := receive(replies, "rpc reply")
		responses[d.CorrelationId] = string(d.Body)
	}
	answers := []int{}
	for corr, n := range asked {
		expect("answer to "+strconv.Itoa(n), responses[corr], strconv.Itoa(n*n))
		v, _ := strconv.Atoi(responses[corr])
		answers = append(answers, v)
	}
	sort.Ints(answers)
	expect("answers", answers, []int{1, 4, 9, 16, 25})
	must(client.Close(), "close client")
	_, err = sch.QueueDelete(queue, false, false, false)
	must(err, "queue.delete")
	select { // deleting the queue cancels the server's consumer
	case <-serverDone:
	case <-time.After(wait):
		failf("server consumer not cancelled after its queue was deleted")
	}
	return obs{"answers": answers}
}

// With prefetch 1 a consumer holding an unacked message gets nothing more; the next message
// goes to a consumer with room.
func prefetch(url string) obs {
	queue := unique("prefetch")
	conn := dial(url)
	defer conn.Close()
	ch := channel(conn)
	declareQueue(ch, queue)
	slow := channel(conn)
	must(slow.Qos(1, 0, false), "basic.qos")
	fast := channel(conn)
	slowD, err := slow.Consume(queue, "", false, false, false, false, nil)
	must(err, "basic.consume slow")
	fastD, err := fast.Consume(queue, "", true, false, false, false, nil)
	must(err, "basic.consume fast")
	for i := 0; i < 6; i++ {
		publish(ch, "", queue, fmt.Sprintf("m%d", i))
	}
	got := map[string][]string{"slow": {}, "fast": {}}
	deadline := time.After(wait)
	for len(got["slow"])+len(got["fast"]) < 6 {
		select {
		case d := <-slowD:
			got["slow"] = append(got["slow"], string(d.Body))
		case d := <-fastD:
			got["fast"] = append(got["fast"], string(d.Body))
		case <-deadline:
			failf("only got %v within %s", got, wait)
		}
	}
	expect("deliveries", got, map[string][]string{"slow": {"m0"}, "fast": {"m1", "m2", "m3", "m4", "m5"}})
	_, err = ch.QueueDelete(queue, false, false, false)
	must(err, "queue.delete")
	return obs{"slow": got["slow"], "fast": got["fast"]}
}

// Rejected and nacked messages come back in their original position, redelivered.
func requeueOrder(url string) obs {
	queue := unique("requeue")
	conn := dial(url)
	defer conn.Close()
	ch := channel(conn)
	declareQueue(ch, queue)
	for i := 0; i < 6; i++ {
		publish(ch, "", queue, fmt.Sprintf("m%d", i))
	}
	var tags []uint64
	for i := 0; i < 4; i++ {
		d, ok, err := ch.Get(queue, false)
		must(err, "basic.get")
		if !ok {
			failf("queue empty after %d gets", i)
		}
		expect("body", string(d.Body), fmt.Sprintf("m%d", i))
		tags = append(tags, d.DeliveryTag)
	}
	must(ch.Reject(tags[2], true), "basic.reject")
	must(ch.Nack(tags[0], false, true), "basic.nack")
	must(ch.Ack(tags[3], false), "basic.ack")
	must(ch.Reject(tags[1], false), "basic.reject")
	got := [][]interface{}{}
	for {
		d, ok, err := ch.Get(queue, true)
		must(err, "basic.get")
		if !ok {
			break
		}
		got = append(got, []interface{}{string(d.Body), d.Redelivered})
	}
	expect("order", got, [][]interface{}{{"m0", true}, {"m2", true}, {"m4", false}, {"m5", false}})
	_, err := ch.QueueDelete(queue, false, false, false)
	must(err, "queue.delete")
	return obs{"order": got}
}

// An unroutable mandatory message comes back with 312 NO_ROUTE.
func mandatoryReturn(url string) obs {
	conn := dial(url)
	defer conn.Close()
	ch := channel(conn)
	returns := ch.NotifyReturn(make(chan amqp.Return, 2))
	nobody := unique("nobody")
	must(ch.Publish("", nobody, true, false, amqp.Publishing{Body: []byte("lost")}), "basic.publish")
	must(ch.Publish("amq.direct", "no-binding", true, false, amqp.Publishing{Body: []byte("lost too")}),
		"basic.publish")
	var returned [][]interface{}
	for len(returned) < 2 {
		select {
		case r := <-returns:
			key := r.RoutingKey
			if key == nobody {
				key = "Q"
			}
			returned = append(returned, []interface{}{int(r.ReplyCode), r.ReplyText, r.Exchange, key, string(r.Body)})
		case <-time.After(wait):
			failf("only %d returns within %s", len(returned), wait)
		}
	}
	expect("returned", returned, [][]interface{}{
		{312, "NO_ROUTE", "", "Q", "lost"},
		{312, "NO_ROUTE", "amq.direct", "no-binding", "lost too"},
	})
	return obs{"returned": returned}
}

// Publisher confirms: every publish is acked; an unroutable mandatory one is returned, then
// acked.
func confirms(url string) obs {
	queue := unique("confirm")
	conn := dial(url)
	defer conn.Close()
	ch := channel(conn)
	declareQueue(ch, queue)
	must(ch.Confirm(false), "confirm.select")
	confirmations := ch.NotifyPublish(make(chan amqp.Confirmation, 101))
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	const n = 100
	for i := 0; i < n; i++ {
		publish(ch, "", queue, fmt.Sprintf("c%d", i))
	}
	for i := 1; i <= n; i++ {
		select {
		case c := <-confirmations:
			expect("confirmation", c, amqp.Confirmation{DeliveryTag: uint64(i), Ack: true})
		case <-time.After(wait):
			failf("only %d of %d confirmations within %s", i-1, n, wait)
		}
	}
	must(ch.Publish("", unique("nowhere"), true, false, amqp.Publishing{Body: []byte("x")}), "basic.publish")
	var last amqp.Confirmation
	select {
	case last = <-confirmations:
	case <-time.After(wait):
		failf("unroutable mandatory publish not confirmed within %s", wait)
	}
	expect("confirmation of the unroutable publish", last, amqp.Confirmation{DeliveryTag: n + 1, Ack: true})
	// The client hands out returns and confirmations in the order the broker sent them, so the
	// return must already be there.
	var returned []interface{}
	select {
	case r := <-returns:
		returned = []interface{}{int(r.ReplyCode), r.ReplyText, string(r.Body)}
	default:
		failf("the unroutable publish was acked before (or without) being returned")
	}
	expect("return", returned, []interface{}{312, "NO_ROUTE", "x"})
	count := messageCount(ch, queue)
	expect("queued", count, n)
	_, err := ch.QueueDelete(queue, false, false, false)
	must(err, "queue.delete")
	return obs{"confirmed": n, "queued": count, "returned_then_acked": returned}
}

// Publishes and acks in a transaction take effect on commit, vanish on rollback.
func transactions(url string) obs {
	queue := unique("tx")
	conn := dial(url)
	defer conn.Close()
	ch := channel(conn)
	declareQueue(ch, queue)
	must(ch.Tx(), "tx.select")
	publish(ch, "", queue, "a")
	publish(ch, "", queue, "b")
	before := messageCount(ch, queue)
	must(ch.TxCommit(), "tx.commit")
	after := messageCount(ch, queue)
	publish(ch, "", queue, "c")
	must(ch.TxRollback(), "tx.rollback")
	d, ok, err := ch.Get(queue, false)
	must(err, "basic.get")
	if !ok {
		failf("queue empty after commit")
	}
	expect("first message", string(d.Body), "a")
	must(ch.Ack(d.DeliveryTag, false), "basic.ack")
	must(ch.TxRollback(), "tx.rollback")
	must(ch.Ack(d.DeliveryTag, false), "basic.ack")
	must(ch.TxCommit(), "tx.commit")
	left := messageCount(ch, queue)
	expect("before commit, after commit, after ack", []int{before, after, left}, []int{0, 2, 1})
	notTx := channelError(conn, "tx.commit without tx.select", func(c *amqp.Channel) error { return c.TxCommit() })
	expect("tx.commit without tx.select", notTx, []interface{}{406, "PRECONDITION_FAILED - channel is not transactional"})
	_, err = ch.QueueDelete(queue, false, false, false)
	must(err, "queue.delete")
	return obs{"before_commit": before, "after_commit": after, "after_ack": left,
		"errors": obs{"commit_without_select": notTx}}
}

// Bodies larger than a frame arrive intact, and so do empty ones.
func largeMessages(url string) obs {
	queue := unique("large")
	conn := dial(url)
	defer conn.Close()
	ch := channel(conn)
	declareQueue(ch, queue)
	big := make([]byte, 5*1024*1024)
	for i := range big {
		big[i] = byte(i % 256)
	}
	must(ch.Publish("", queue, false, false, amqp.Publishing{Body: big}), "basic.publish big")
	must(ch.Publish("", queue, false, false, amqp.Publishing{Body: []byte{}}), "basic.publish empty")
	d1, ok1, err := ch.Get(queue, true)
	must(err, "basic.get")
	d2, ok2, err := ch.Get(queue, true)
	must(err, "basic.get")
	if !ok1 || !ok2 {
		failf("messages missing: %v %v", ok1, ok2)
	}
	if !bytes.Equal(d1.Body, big) || len(d2.Body) != 0 {
		failf("bodies differ: got sizes %d and %d", len(d1.Body), len(d2.Body))
	}
	// The same through a consumer.
	must(ch.Publish("", queue, false, false, amqp.Publishing{Body: big}), "basic.publish big")
	must(ch.Publish("", queue, false, false, amqp.Publishing{Body: []byte{}}), "basic.publish empty")
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	must(err, "basic.consume")
	c1 := receive(deliveries, "big message")
	c2 := receive(deliveries, "empty message")
	if !bytes.Equal(c1.Body, big) || len(c2.Body) != 0 {
		failf("consumed bodies differ: got sizes %d and %d", len(c1.Body), len(c2.Body))
	}
	_, err = ch.QueueDelete(queue, false, false, false)
	must(err, "queue.delete")
	return obs{"sizes": []int{len(d1.Body), len(d2.Body)}, "consumed_sizes": []int{len(c1.Body), len(c2.Body)}}
}

// Many channels on one connection, each with its own exclusive server-named queue; a
// channel error on one leaves the others usable.
func manyChannels(url string) obs {
	const n = 200
	conn := dial(url)
	defer conn.Close()
	chans := make([]*amqp.Channel, n)
	queues := make([]string, n)
	seen := map[string]bool{}
	for i := range chans {
		chans[i] = channel(conn)
		queues[i] = declareServerNamed(chans[i])
		if seen[queues[i]] {
			failf("queue name %s generated twice", queues[i])
		}
		seen[queues[i]] = true
	}
	for i, ch := range chans {
		publish(ch, "", queues[i], fmt.Sprintf("for %d", i))
	}
	gotOwn := 0
	for i, ch := range chans {
		d, ok, err := ch.Get(queues[i], true)
		must(err, "basic.get")
		if !ok {
			failf("channel %d: queue empty", i)
		}
		expect(fmt.Sprintf("channel %d", i), string(d.Body), fmt.Sprintf("for %d", i))
		gotOwn++
	}

	// A channel error on one of them.
	victim := n / 2
	closed := chans[victim].NotifyClose(make(chan *amqp.Error, 1))
	missing := unique("missing")
	_, err := chans[victim].QueueDeclarePassive(missing, false, false, false, false, nil)
	e := asAMQPError(err)
	if e == nil {
		failf("passive declare of a missing queue: got %v", err)
	}
	select {
	case <-closed:
	case <-time.After(wait):
		failf("channel not reported closed")
	}
	if !chans[victim].IsClosed() || conn.IsClosed() {
		failf("channel closed %v, connection closed %v", chans[victim].IsClosed(), conn.IsClosed())
	}
	errObs := replaceName([]interface{}{e.Code, e.Reason}, missing)
	expect("error", errObs, []interface{}{404, "NOT_FOUND - no queue 'Q' in vhost '/'"})

	usable := 0
	for i, ch := range chans {
		if i == victim {
			continue
		}
		publish(ch, "", queues[i], fmt.Sprintf("again %d", i))
	}
	for i, ch := range chans {
		if i == victim {
			continue
		}
		d, ok, err := ch.Get(queues[i], true)
		must(err, fmt.Sprintf("channel %d after the error: basic.get", i))
		if !ok {
			failf("channel %d after the error: queue empty", i)
		}
		expect(fmt.Sprintf("channel %d after the error", i), string(d.Body), fmt.Sprintf("again %d", i))
		usable++
	}
	// The victim's queue still belongs to the connection: another channel can read it.
	publish(chans[0], "", queues[victim], "orphan")
	d, ok, err := chans[0].Get(queues[victim], true)
	must(err, "basic.get from the victim's queue")
	if !ok || string(d.Body) != "orphan" {
		failf("victim's queue not usable from another channel")
	}
	return obs{"channels": n, "got_own_message": gotOwn, "error": errObs, "usable_after_error": usable,
		"victim_queue_usable": true}
}

// Channel and connection errors carry RabbitMQ's codes and texts.
func errorsScenario(url string) obs {
	observed := obs{}
	conn := dial(url)
	defer conn.Close()

	missing := unique("does-not-exist")
	got := channelError(conn, "passive declare of a missing queue", func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(missing, false, false, false, false, nil)
		return err
	})
	expect("passive_missing", got, []interface{}{404, fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", missing)})
	observed["passive_missing"] = replaceName(got, missing)

	q := unique("ttl")
	ch := channel(conn)
	_, err := ch.QueueDeclare(q, false, false, false, false, amqp.Table{"x-message-ttl": int32(1000)})
	must(err, "queue.declare with ttl")
	got = channelError(conn, "inequivalent redeclare", func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(q, false, false, false, false, amqp.Table{"x-message-ttl": int32(2000)})
		return err
	})
	expect("inequivalent", got, []interface{}{406, fmt.Sprintf(
		"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '%s' in vhost '/': received '2000' but current is '1000'", q)})
	observed["inequivalent"] = replaceName(got, q)

	got = channelError(conn, "declare amq.mine", func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare("amq.mine", "direct", false, false, false, false, nil)
	})
	expect("reserved", got, []interface{}{403, "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'"})
	observed["reserved"] = got

	ch = channel(conn)
	must(ch.ExchangeDeclare(q+"-x", "direct", false, false, false, false, nil), "exchange.declare")
	declareQueue(ch, q+"-q")
	must(ch.QueueBind(q+"-q", "k", q+"-x", false, nil), "queue.bind")
	got = channelError(conn, "exchange.delete if-unused", func(ch *amqp.Channel) error {
		return ch.ExchangeDelete(q+"-x", true, false)
	})
	expect("exchange_in_use", got, []interface{}{406, fmt.Sprintf("PRECONDITION_FAILED - exchange '%s-x' in vhost '/' in use", q)})
	observed["exchange_in_use"] = replaceName(got, q)

	publish(ch, "", q+"-q", "x")
	waitEnqueued(ch, q+"-q", 1)
	got = channelError(conn, "queue.delete if-empty", func(c *amqp.Channel) error {
		_, err := c.QueueDelete(q+"-q", false, true, false)
		return err
	})
	expect("queue_not_empty", got, []interface{}{406, fmt.Sprintf("PRECONDITION_FAILED - queue '%s-q' in vhost '/' not empty", q)})
	observed["queue_not_empty"] = replaceName(got, q)

	got = channelError(conn, "exchange redeclared with another type", func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare(q+"-x", "fanout", false, false, false, false, nil)
	})
	expect("exchange_inequivalent", got, []interface{}{406, fmt.Sprintf(
		"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '%s-x' in vhost '/': received 'fanout' but current is 'direct'", q)})
	observed["exchange_inequivalent"] = replaceName(got, q)

	got = channelError(conn, "publish to a missing exchange", func(ch *amqp.Channel) error {
		return ch.Publish("no-such-exchange-here", "k", false, false, amqp.Publishing{Body: []byte("x")})
	})
	expect("publish_missing_exchange", got, []interface{}{404, "NOT_FOUND - no exchange 'no-such-exchange-here' in vhost '/'"})
	observed["publish_missing_exchange"] = got

	ch = channel(conn)
	must(ch.ExchangeDelete(q+"-x", false, false), "exchange.delete")
	for _, name := range []string{q + "-q", q} {
		_, err := ch.QueueDelete(name, false, false, false)
		must(err, "queue.delete")
	}
	got = channelError(conn, "ack of a tag never delivered", func(ch *amqp.Channel) error {
		return ch.Ack(42, false)
	})
	expect("unknown_tag", got, []interface{}{406, "PRECONDITION_FAILED - unknown delivery tag 42"})
	observed["unknown_tag"] = got

	// Connection-level errors, each on a fresh connection.
	got = connectionError(url, "basic.recover requeue=false", func(ch *amqp.Channel) error {
		return ch.Recover(false)
	})
	expect("recover_without_requeue", got, []interface{}{540, "NOT_IMPLEMENTED - requeue=false"})
	observed["recover_without_requeue"] = got

	got = connectionError(url, "channel.flow active=false", func(ch *amqp.Channel) error {
		return ch.Flow(false)
	})
	expect("flow_inactive", got, []interface{}{540, "NOT_IMPLEMENTED - active=false"})
	observed["flow_inactive"] = got

	// amqp091-go does not refuse a duplicate consumer tag itself (it closes its own delivery
	// channel for the first consumer and sends basic.consume), so the broker decides.
	got = connectionError(url, "consumer tag reused on one channel", func(ch *amqp.Channel) error {
		queue := declareServerNamed(ch)
		if _, err := ch.Consume(queue, "dup", false, false, false, false, nil); err != nil {
			failf("first basic.consume: %v", err)
		}
		_, err := ch.Consume(queue, "dup", false, false, false, false, nil)
		return err
	})
	expect("reused_consumer_tag", got, []interface{}{530, "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"})
	observed["reused_consumer_tag"] = got

	// The first connection survived all of its channel errors.
	if conn.IsClosed() {
		failf("the connection with only channel errors was closed")
	}
	ch = channel(conn)
	q2 := declareServerNamed(ch)
	expect("connection usable after channel errors", messageCount(ch, q2), 0)
	return observed
}

// An exclusive queue is locked to its connection and deleted with it.
func exclusiveQueue(url string) obs {
	owner := dial(url)
	defer owner.Close()
	och := channel(owner)
	queue := unique("mine")
	_, err := och.QueueDeclare(queue, false, false, true, false, nil)
	must(err, "queue.declare exclusive")
	other := dial(url)
	defer other.Close()
	passive := func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
		return err
	}
	locked := channelError(other, "passive declare from another connection", passive)
	expect("locked", locked, []interface{}{405, fmt.Sprintf("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '%s' in vhost '/'. "+
		"It could be originally declared on another connection or the exclusive property value "+
		"does not match that of the original declaration.", queue)})
	must(owner.Close(), "close owner")
	gone := channelError(other, "passive declare after the owner closed", passive)
	expect("after_close", gone, []interface{}{404, fmt.Sprintf("NOT_FOUND - no queue '%s' in vhost '/'", queue)})
	return obs{"locked": replaceName(locked, queue), "after_close": replaceName(gone, queue)}
}

// Deleting a queue under a consumer tells the consumer (basic.cancel from the broker).
func consumerCancelNotify(url string) obs {
	queue := unique("doomed")
	conn := dial(url)
	defer conn.Close()
	ch := channel(conn)
	declareQueue(ch, queue)
	cancels := ch.NotifyCancel(make(chan string, 1))
	deliveries, err := ch.Consume(queue, "watcher", true, false, false, false, nil)
	must(err, "basic.consume")
	other := channel(conn)
	deleted, err := other.QueueDelete(queue, false, false, false)
	must(err, "queue.delete")
	var cancelled []string
	select {
	case tag := <-cancels:
		cancelled = append(cancelled, tag)
	case <-time.After(wait):
		failf("no basic.cancel within %s", wait)
	}
	expect("cancelled", cancelled, []string{"watcher"})
	// The client closes the consumer's delivery channel.
	select {
	case _, ok := <-deliveries:
		if ok {
			failf("a delivery after the queue was deleted")
		}
	case <-time.After(wait):
		failf("delivery channel not closed after basic.cancel")
	}
	if ch.IsClosed() {
		failf("the consumer's channel was closed")
	}
	expect("channel usable", messageCount(ch, declareServerNamed(ch)), 0)
	return obs{"cancelled": cancelled, "deleted_messages": deleted, "deliveries_closed": true}
}

// ---------------------------------------------------------------------------------------

func main() {
	url := flag.String("url", "", "broker URL")
	list := flag.Bool("list", false, "list scenarios")
	run := flag.String("run", "", "scenario to run")
	flag.Parse()
	if *list {
		for _, name := range scenarioOrder {
			fmt.Println(name)
		}
		return
	}
	fn, ok := scenarios[*run]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown scenario %q\n", *run)
		os.Exit(2)
	}
	if *url == "" {
		fmt.Fprintln(os.Stderr, "--url is required")
		os.Exit(2)
	}
	// A scenario that hangs despite the bounded waits still fails in bounded time.
	go func() {
		time.Sleep(90 * time.Second)
		fmt.Fprintf(os.Stderr, "AssertionError: scenario %s timed out after 90s\n", *run)
		os.Exit(1)
	}()
	observed := func() (o obs) {
		defer func() {
			if r := recover(); r != nil {
				if f, ok := r.(failure); ok {
					fmt.Fprintf(os.Stderr, "AssertionError: %s: %s\n", *run, f.msg)
					os.Exit(1)
				}
				panic(r)
			}
		}()
		return fn(*url)
	}()
	out, err := json.Marshal(observed)
	if err != nil {
		fmt.Fprintf(os.Stderr, "encoding observations: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
