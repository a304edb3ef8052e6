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
