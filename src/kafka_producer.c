/*-------------------------------------------------------------------------
 *
 * kafka_producer.c
 *	  Module entry point: settings, shared memory and the launcher of the
 *	  background workers are set up when the library is preloaded.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "kafka_producer.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	/*
	 * Loaded on demand by a backend, the library only offers its functions;
	 * they refuse to work and say why (kp_shmem_check_preloaded).
	 */
	if (!process_shared_preload_libraries_in_progress)
		return;

	/* every module's settings, then no other kafka.* name */
	kp_settings_init();
	kp_producer_settings_init();
	kp_drop_guard_init();
	kp_commit_wait_init();
	kp_schema_registry_init();
	kp_backlog_init();
	MarkGUCPrefixReserved("kafka");
	kp_shmem_init();
	kp_committing_init();
	kp_sync_init();
	kp_enqueue_init();
	kp_launcher_init();
}
