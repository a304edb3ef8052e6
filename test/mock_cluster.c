/*
 * mock_cluster.c
 *	  Holds a librdkafka mock Kafka cluster (a Kafka-protocol server on
 *	  loopback ports) for the end-to-end tests and the demo.
 *
 *	  Prints the bootstrap list on the first line of stdout, then reads one
 *	  fault command per line from stdin and answers "ok" or "error: ...":
 *
 *		down BROKER_ID | up BROKER_ID | rtt BROKER_ID MS
 *		produce_errors ERROR_NAME COUNT		next COUNT Produce requests fail
 *		broker_produce_error BROKER_ID ERROR_NAME MS
 *								the broker's next Produce request fails,
 *								answered MS later; from then on the broker
 *								takes none of produce_errors' errors
 *		clear_errors
 *		topic_error TOPIC ERROR_NAME		in metadata responses
 *		create TOPIC PARTITIONS REPLICATION_FACTOR
 *		leader TOPIC PARTITION BROKER_ID
 *		quit
 *
 *	  End of input stops the cluster too, so it never outlives its test.
 *	  Usage: mock_cluster [BROKERS]	(default 3)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define PRODUCE_API_KEY 0

/* Error codes by their librdkafka name without prefix, e.g. MSG_SIZE_TOO_LARGE */
static int
error_by_name(const char *name, rd_kafka_resp_err_t *err)
{
	const struct rd_kafka_err_desc *descs;
	size_t		count;

	rd_kafka_get_err_descs(&descs, &count);
	for (size_t i = 0; i < count; i++)
	{
		if (descs[i].name != NULL && strcmp(descs[i].name, name) == 0)
		{
			*err = descs[i].code;
			return 1;
		}
	}
	return 0;
}

static const char *
run_command(rd_kafka_mock_cluster_t *cluster, char *line)
{
	static char reply[256];
	char		word[64];
	char		arg1[256];
	char		arg2[64];
	long		n1;
	long		n2;
	rd_kafka_resp_err_t err;
	rd_kafka_resp_err_t result = RD_KAFKA_RESP_ERR_NO_ERROR;

	if (sscanf(line, "%63s", word) != 1)
		return "error: empty command";
	if (strcmp(word, "down") == 0 && sscanf(line, "%*s %ld", &n1) == 1)
		result = rd_kafka_mock_broker_set_down(cluster, (int32_t) n1);
	else if (strcmp(word, "up") == 0 && sscanf(line, "%*s %ld", &n1) == 1)
		result = rd_kafka_mock_broker_set_up(cluster, (int32_t) n1);
	else if (strcmp(word, "rtt") == 0 &&
			 sscanf(line, "%*s %ld %ld", &n1, &n2) == 2)
		result = rd_kafka_mock_broker_set_rtt(cluster, (int32_t) n1, (int) n2);
	else if (strcmp(word, "produce_errors") == 0 &&
			 sscanf(line, "%*s %63s %ld", arg2, &n1) == 2)
	{
		rd_kafka_resp_err_t *errors;

		if (!error_by_name(arg2, &err) || n1 < 1)
			return "error: unknown error name or bad count";
		errors = malloc(sizeof(*errors) * n1);
		for (long i = 0; i < n1; i++)
			errors[i] = err;
		rd_kafka_mock_push_request_errors_array(cluster, PRODUCE_API_KEY,
												(size_t) n1, errors);
		free(errors);
	}
	else if (strcmp(word, "broker_produce_error") == 0 &&
			 sscanf(line, "%*s %ld %63s %ld", &n1, arg2, &n2) == 3)
	{
		if (!error_by_name(arg2, &err))
			return "error: unknown error name";
		result = rd_kafka_mock_broker_push_request_error_rtts(cluster,
															  (int32_t) n1,
															  PRODUCE_API_KEY,
															  1, err, (int) n2);
	}
	else if (strcmp(word, "clear_errors") == 0)
		rd_kafka_mock_clear_request_errors(cluster, PRODUCE_API_KEY);
	else if (strcmp(word, "topic_error") == 0 &&
			 sscanf(line, "%*s %255s %63s", arg1, arg2) == 2)
	{
		if (!error_by_name(arg2, &err))
			return "error: unknown error name";
		rd_kafka_mock_topic_set_error(cluster, arg1, err);
	}
	else if (strcmp(word, "create") == 0 &&
			 sscanf(line, "%*s %255s %ld %ld", arg1, &n1, &n2) == 3)
		result = rd_kafka_mock_topic_create(cluster, arg1, (int) n1, (int) n2);
	else if (strcmp(word, "leader") == 0 &&
			 sscanf(line, "%*s %255s %ld %ld", arg1, &n1, &n2) == 3)
		result = rd_kafka_mock_partition_set_leader(cluster, arg1,
													(int32_t) n1,
													(int32_t) n2);
	else
		return "error: unknown command or missing arguments";

	if (result != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		snprintf(reply, sizeof(reply), "error: %s", rd_kafka_err2str(result));
		return reply;
	}
	return "ok";
}

int
main(int argc, char **argv)
{
	int			brokers = argc > 1 ? atoi(argv[1]) : 3;
	char		errstr[512];
	char		line[1024];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk;
	rd_kafka_mock_cluster_t *cluster;

	/* the handle only hosts the cluster; quiet its own logging */
	rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "mock_cluster: %s\n", errstr);
		return 1;
	}
	cluster = rd_kafka_mock_cluster_new(rk, brokers);
	if (cluster == NULL)
	{
		fprintf(stderr, "mock_cluster: could not create the cluster\n");
		return 1;
	}
	printf("%s\n", rd_kafka_mock_cluster_bootstraps(cluster));
	fflush(stdout);

	while (fgets(line, sizeof(line), stdin) != NULL)
	{
		if (strncmp(line, "quit", 4) == 0)
			break;
		printf("%s\n", run_command(cluster, line));
		fflush(stdout);
	}
	rd_kafka_mock_cluster_destroy(cluster);
	rd_kafka_destroy(rk);
	return 0;
}
