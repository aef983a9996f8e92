// go-client drives shoes-vz-plugin the way myshoes does: hashicorp/go-plugin with myshoes'
// exact client config, a fresh plugin process per call, then Kill(). It prints one JSON line
// ({"results": [...]}) for crates/plugin/tests/go_plugin_compat.rs to check.
//
// Built by that test (tests/common/go_client.rs) as cmd/client of a copy of the myshoes client kit
// (shared/myshoes-client-kit): go-plugin v1.7.0 and grpc-go v1.77.0 as myshoes v1.20.1 pins them,
// vendored, and myshoes' own generated stubs (myshoespb).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	pb "myshoesclient/myshoespb"
)

// myshoes' pkg/shoes: the plugin wrapper and its client.
type Plugin struct {
	plugin.Plugin
}

func (p *Plugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	return nil
}

func (p *Plugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return pb.NewShoesClient(c), nil
}

// safeBuffer collects output written from go-plugin's goroutines.
type safeBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type result struct {
	Op     string            `json:"op"`
	Code   string            `json:"code"`
	Error  string            `json:"message"`
	Fields map[string]string `json:"fields"`
	// The call itself, and go-plugin's Kill() (Shutdown, then up to 2 s, then SIGKILL).
	ElapsedMs int64 `json:"elapsed_ms"`
	KillMs    int64 `json:"kill_ms"`
	// go-plugin logged "plugin failed to exit gracefully" and sent SIGKILL.
	ForcedKill bool `json:"forced_kill"`
	// go-plugin's "plugin process exited" log line (carries error=... unless exit status 0).
	ExitLine     string `json:"exit_line"`
	Exited       bool   `json:"exited"`
	PluginStderr string `json:"plugin_stderr"`
	SyncStdout   string `json:"sync_stdout"`
	// Everything go-plugin itself logged for this call, at trace level (hclog's text format).
	HostLog string `json:"host_log"`
}

type options struct {
	pluginPath   string
	op           string
	runnerName   string
	setupScript  string
	resourceType int
	labels       []string
	cloudID      string
}

func runOne(o options) result {
	res := result{Op: o.op, Fields: map[string]string{}}
	var hostLog, pluginStderr, syncStdout safeBuffer
	logger := hclog.New(&hclog.LoggerOptions{Name: "myshoes", Output: &hostLog, Level: hclog.Trace})

	// As myshoes' pkg/shoes.GetClient does, plus a logger and buffers to inspect.
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: plugin.HandshakeConfig{
			ProtocolVersion:  1,
			MagicCookieKey:   "SHOES_PLUGIN_MAGIC_COOKIE",
			MagicCookieValue: "are_you_a_shoes?",
		},
		Plugins:          map[string]plugin.Plugin{"shoes_grpc": &Plugin{}},
		Cmd:              exec.Command(o.pluginPath),
		Managed:          true,
		Stderr:           &pluginStderr,
		SyncStdout:       &syncStdout,
		SyncStderr:       os.Stderr,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger,
	})

	start := time.Now()
	err := call(client, o, &res)
	res.ElapsedMs = time.Since(start).Milliseconds()
	if err != nil {
		if st, ok := status.FromError(err); ok {
			res.Code = st.Code().String()
			res.Error = st.Message()
		} else {
			res.Code = "ClientError"
			res.Error = err.Error()
		}
	} else {
		res.Code = "OK"
	}

	killStart := time.Now()
	client.Kill()
	res.KillMs = time.Since(killStart).Milliseconds()
	res.Exited = client.Exited()

	log := hostLog.String()
	res.ForcedKill = strings.Contains(log, "plugin failed to exit gracefully")
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "plugin process exited") {
			res.ExitLine = line
		}
	}
	res.PluginStderr = pluginStderr.String()
	res.SyncStdout = syncStdout.String()
	res.HostLog = log
	return res
}

func call(client *plugin.Client, o options, res *result) error {
	rpcClient, err := client.Client()
	if err != nil {
		return fmt.Errorf("failed to get shoes client: %w", err)
	}
	raw, err := rpcClient.Dispense("shoes_grpc")
	if err != nil {
		return fmt.Errorf("failed to shoes client instance: %w", err)
	}
	shoes := raw.(pb.ShoesClient)
	switch o.op {
	case "ping":
		return rpcClient.Ping()
	case "add":
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		resp, err := shoes.AddInstance(ctx, &pb.AddInstanceRequest{
			RunnerName:   o.runnerName,
			SetupScript:  o.setupScript,
			ResourceType: pb.ResourceType(o.resourceType),
			Labels:       o.labels,
		})
		if err != nil {
			return err
		}
		res.Fields["cloud_id"] = resp.CloudId
		res.Fields["ip_address"] = resp.IpAddress
		res.Fields["shoes_type"] = resp.ShoesType
		res.Fields["resource_type"] = resp.ResourceType.String()
		return nil
	case "delete":
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		_, err := shoes.DeleteInstance(ctx, &pb.DeleteInstanceRequest{CloudId: o.cloudID, Labels: o.labels})
		return err
	default:
		return fmt.Errorf("unknown op %q", o.op)
	}
}

func main() {
	var o options
	var labels string
	var parallel int
	flag.StringVar(&o.pluginPath, "plugin", "", "path of the plugin binary")
	flag.StringVar(&o.op, "op", "ping", "add, delete or ping")
	flag.StringVar(&o.runnerName, "runner-name", "", "AddInstance runner_name (suffixed -N with -parallel)")
	flag.StringVar(&o.setupScript, "setup-script", "", "AddInstance setup_script")
	flag.IntVar(&o.resourceType, "resource-type", 0, "AddInstance resource_type number")
	flag.StringVar(&labels, "labels", "", "comma-separated labels")
	flag.StringVar(&o.cloudID, "cloud-id", "", "DeleteInstance cloud_id")
	flag.IntVar(&parallel, "parallel", 1, "plugin processes to run at once, each with one call")
	flag.Parse()
	if o.pluginPath == "" {
		fmt.Fprintln(os.Stderr, "usage: go-client -plugin PATH -op add|delete|ping [flags]")
		os.Exit(2)
	}
	if labels != "" {
		o.labels = strings.Split(labels, ",")
	}
	defer plugin.CleanupClients()

	results := make([]result, parallel)
	var wg sync.WaitGroup
	for i := 0; i < parallel; i++ {
		one := o
		if parallel > 1 {
			one.runnerName = fmt.Sprintf("%s-%d", o.runnerName, i)
		}
		wg.Add(1)
		go func(i int, one options) {
			defer wg.Done()
			results[i] = runOne(one)
		}(i, one)
	}
	wg.Wait()
	out, err := json.Marshal(map[string]interface{}{"results": results})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
