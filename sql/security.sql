-- Who can do what: DDL by roles with no rights on kafka.*, and the ACL of
-- every object of the extension.

-- Any role can create and drop its own objects in the served database:
-- the sql_drop event trigger reads kafka.* as the extension's owner
CREATE ROLE kafka_nobody;
GRANT CREATE ON SCHEMA public TO kafka_nobody;
SET ROLE kafka_nobody;
CREATE TEMP TABLE scratch (a int, b int);
ALTER TABLE scratch DROP COLUMN b;
DROP TABLE scratch;
CREATE TABLE mine (a int CONSTRAINT mine_key PRIMARY KEY, b int);
CREATE INDEX mine_b ON mine (b);
DROP INDEX mine_b;
CREATE VIEW mine_view AS SELECT a FROM mine;
DROP VIEW mine_view;
CREATE FUNCTION mine_f() RETURNS int LANGUAGE sql AS 'SELECT 1';
DROP FUNCTION mine_f();
ALTER TABLE mine DROP CONSTRAINT mine_key;
DROP TABLE mine;
-- and it still cannot read or call what is not meant for it
SELECT count(*) FROM kafka.publication;
SELECT kafka.forget_dropped_tables();
SELECT kafka.attnums('pg_class', '{relname}', 'columns');
RESET ROLE;
REVOKE CREATE ON SCHEMA public FROM kafka_nobody;
DROP ROLE kafka_nobody;

-- Publishing is delegated as ALTER TABLE is: a table's owner granted
-- EXECUTE publishes its own tables, with no right on kafka.*, and no other
CREATE ROLE kafka_owner;
CREATE ROLE kafka_writer;
GRANT CREATE ON SCHEMA public TO kafka_owner;
GRANT EXECUTE ON FUNCTION
	kafka_publish(regclass, text, text, text[], text[], boolean, text, boolean, text, text, text[], text[]),
	kafka_unpublish(regclass) TO kafka_owner;
CREATE TABLE not_theirs (id int PRIMARY KEY);
SET ROLE kafka_owner;
CREATE TABLE theirs (id int PRIMARY KEY, status varchar);
SELECT kafka_publish('theirs', "where" => $$status <> 'draft'$$);
SELECT kafka_publish('not_theirs');
SELECT kafka_unpublish('not_theirs');
GRANT INSERT ON theirs TO kafka_writer;
RESET ROLE;
SELECT "table", topic, row_filter FROM kafka.publications WHERE "table" = 'theirs'::regclass;

-- The filter runs as the table's owner with a fixed search_path: an
-- operator planted in a writer's search_path is never called
CREATE TABLE spied (who name);
GRANT INSERT, SELECT ON spied TO PUBLIC;
CREATE FUNCTION public.spy_ne(varchar, varchar) RETURNS boolean LANGUAGE sql
	AS $$ INSERT INTO public.spied VALUES (current_user); SELECT $1::text <> $2::text $$;
CREATE OPERATOR public.<> (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.spy_ne);
-- (published again as superuser: so the filter is there even where
-- delegation failed)
SELECT kafka_publish('theirs', "where" => $$status <> 'draft'$$);
SET ROLE kafka_writer;
SET search_path = public, pg_catalog;
INSERT INTO theirs VALUES (1, 'paid'), (2, 'draft');
RESET search_path;
RESET ROLE;
SELECT count(*) AS spied FROM spied;
SELECT count(*) AS published FROM kafka.messages WHERE topic = 'public.theirs';

-- A superuser publishing another's table runs its filter as that owner
CREATE FUNCTION public.whoami() RETURNS name LANGUAGE sql
	AS $$ INSERT INTO public.spied VALUES (current_user) RETURNING who $$;
SELECT kafka_publish('theirs', "where" => 'public.whoami() IS NOT NULL');
SELECT who = 'kafka_owner' AS ran_as_table_owner FROM spied;

-- a new owner of the table owns its filter: writes go on, as that owner
CREATE ROLE kafka_heir;
ALTER TABLE theirs OWNER TO kafka_heir;
SELECT f.proowner::regrole AS filter_owner FROM kafka.publication p
  JOIN pg_proc f ON f.oid = p.row_filter_function WHERE p.relid = 'theirs'::regclass;
SET ROLE kafka_writer;
INSERT INTO theirs VALUES (3, 'paid');
RESET ROLE;
ALTER TABLE theirs OWNER TO kafka_owner;
DROP ROLE kafka_heir;

SET ROLE kafka_owner;
SELECT kafka_unpublish('theirs');
DROP TABLE theirs;
RESET ROLE;
DROP TABLE not_theirs, spied;
DROP OPERATOR public.<> (varchar, varchar);
DROP FUNCTION public.spy_ne(varchar, varchar), public.whoami();
REVOKE ALL ON FUNCTION
	kafka_publish(regclass, text, text, text[], text[], boolean, text, boolean, text, text, text[], text[]),
	kafka_unpublish(regclass) FROM kafka_owner;
REVOKE CREATE ON SCHEMA public FROM kafka_owner;
DROP ROLE kafka_owner, kafka_writer;

-- Every object of the extension, its ACL (the owner shown as "owner";
-- NULL: the default) and whether PUBLIC may use it: a new object, or a
-- privilege granted to PUBLIC, shows here
SELECT pg_describe_object(d.classid, d.objid, 0) AS object,
	   replace(replace(coalesce(p.proacl, c.relacl, n.nspacl, t.typacl)::text,
					   '/' || current_user, '/owner'),
			   current_user || '=', 'owner=') AS acl,
	   CASE d.classid
		   WHEN 'pg_proc'::regclass THEN has_function_privilege('public', d.objid, 'EXECUTE')
		   WHEN 'pg_class'::regclass THEN has_table_privilege('public', d.objid, 'SELECT')
		   WHEN 'pg_namespace'::regclass THEN has_schema_privilege('public', d.objid, 'USAGE')
		   WHEN 'pg_type'::regclass THEN has_type_privilege('public', d.objid, 'USAGE')
	   END AS public
  FROM pg_depend d
  LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
  LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
  LEFT JOIN pg_namespace n ON d.classid = 'pg_namespace'::regclass AND n.oid = d.objid
  LEFT JOIN pg_type t ON d.classid = 'pg_type'::regclass AND t.oid = d.objid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'kafka_producer')
 ORDER BY 1;
