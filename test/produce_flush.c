/*
 * produce_flush: the baseline of the kafka_send_sync() latency benchmark.
 * A bare librdkafka producer, made once, sends COUNT messages one at a
 * time, each followed by rd_kafka_flush(), and prints each round trip in
 * microseconds, one per line.  Settings match the extension's defaults:
 * acks=all, idempotence on, linger.ms 0.
 *
 * usage: produce_flush BOOTSTRAP TOPIC COUNT
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

static void
set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
	char		errstr[256];

	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		fprintf(stderr, "%s: %s\n", name, errstr);
		exit(1);
	}
}

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* a delivery report callback: without one, flush() only wakes every 10 ms */
static void
delivered(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	(void) rk;
	(void) opaque;
	if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		fprintf(stderr, "delivery: %s\n", rd_kafka_err2str(msg->err));
		exit(1);
	}
}

static void
send_one(rd_kafka_t *rk, const char *topic, const char *value)
{
	rd_kafka_resp_err_t err;

	err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
							RD_KAFKA_V_VALUE((void *) value, strlen(value)),
							RD_KAFKA_V_KEY("k", 1),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							RD_KAFKA_V_END);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		err = rd_kafka_flush(rk, 30000);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		fprintf(stderr, "produce: %s\n", rd_kafka_err2str(err));
		exit(1);
	}
}

int
main(int argc, char **argv)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errstr[256];
	rd_kafka_t *rk;
	int			count;
	char		value[81];

	if (argc != 4)
	{
		fprintf(stderr, "usage: %s BOOTSTRAP TOPIC COUNT\n", argv[0]);
		return 2;
	}
	count = atoi(argv[3]);
	memset(value, 'x', 80);
	value[80] = '\0';
	set(conf, "bootstrap.servers", argv[1]);
	set(conf, "acks", "all");
	set(conf, "enable.idempotence", "true");
	set(conf, "linger.ms", "0");
	rd_kafka_conf_set_dr_msg_cb(conf, delivered);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "%s\n", errstr);
		return 1;
	}
	/* the first message waits for the connection and the topic's metadata */
	send_one(rk, argv[2], value);
	for (int i = 0; i < count; i++)
	{
		double		start = now_us();

		send_one(rk, argv[2], value);
		printf("%.1f\n", now_us() - start);
	}
	rd_kafka_destroy(rk);
	return 0;
}
